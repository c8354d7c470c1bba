"""Queue depth from the broker's management interface: how many runs wait, and for how long.

For each input queue of the agent's processors and for the dead-letter queue, the number of
messages waiting at the broker (not yet handed to a consumer) and the age of the oldest of
them.  Read from:

- ActiveMQ Classic: Jolokia (the web console's ``/api/jolokia``): the queue beans' ``QueueSize``
  less ``InFlightCount``; the oldest age from the ``JMSTimestamp`` of the first message past
  those in flight (``browse()``).
- Artemis: Jolokia (``/console/jolokia``): the addresses' ``MessageCount`` (the query SNS's own
  collector uses), less the queue's ``DeliveringCount``, and the queue's ``FirstMessageAge``.
- RabbitMQ: the management HTTP API (``/api``): ``messages_ready``, and the age from
  ``head_message_timestamp``, which RabbitMQ knows only for messages that carry a timestamp.

The URL and credentials come from the config keys ``management_*``; with no
``management_url`` nothing is read (:func:`reader` returns None).
"""

import dataclasses
import datetime
import logging
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote, urlsplit

import requests

from postprocessing.config import Config

logger = logging.getLogger(__name__)

#: The DLQ each broker kind has of its own (RabbitMQ has none: name it in dead_letter_queue).
BROKER_DLQ = {"activemq": "ActiveMQ.DLQ", "artemis": "DLQ"}


class ManagementError(Exception):
    """The management interface could not be read; the message says why."""


@dataclasses.dataclass(frozen=True)
class QueueDepth:
    """One queue: ``messages`` waiting, ``oldest_age_sec`` of the oldest (None: empty or unknown)."""

    queue: str
    messages: int
    oldest_age_sec: Optional[float]
    dead_letters: bool = False


def plain_name(destination: str) -> str:
    """``/queue/A.B`` -> ``A.B``: the name a management interface knows a queue by."""
    for prefix in ("/queue/", "/amq/queue/"):
        if destination.startswith(prefix):
            return destination[len(prefix):]
    return destination


def input_queues(config: Config) -> List[str]:
    """The input queues of the processors the config runs, as plain names."""
    from postprocessing.processors import REGISTRY

    return [plain_name(config.destination(REGISTRY[name].queue_key)) for name in config.processors]


def dead_letter_queue(config: Config, kind: str) -> Optional[str]:
    """The DLQ's plain name: ``dead_letter_queue``, else the broker's own; None when there is none."""
    name = config.dead_letter_queue or BROKER_DLQ.get(kind, "")
    return plain_name(name) if name else None


def broker_kind(config: Config) -> str:
    """The kind of broker the management URL belongs to: ``broker_type``, else guessed from the URL."""
    if config.broker_type != "auto":
        return config.broker_type
    url = config.management_url
    if "/console/jolokia" in url:
        return "artemis"
    if "jolokia" in url:
        return "activemq"
    return "rabbitmq"


class QueueReader:
    """Reads queue depth from one broker's management interface."""

    def __init__(self, config: Config, kind: str, session: Optional[requests.Session] = None) -> None:
        self.config = config
        self.kind = kind
        self.url = config.management_url.rstrip("/")
        self.session = session or requests.Session()
        if config.management_user:
            self.session.auth = (config.management_user, config.management_pwd)
        elif config.amq_user:
            self.session.auth = (config.amq_user, config.amq_pwd)
        self._artemis_name = config.management_broker_name
        if kind in ("activemq", "artemis"):
            # Jolokia's CORS policy (Artemis' jolokia-access.xml checks strictly) wants an Origin:
            # the console's own, as a browser on the console would send.
            parts = urlsplit(self.url)
            self.session.headers["Origin"] = "%s://%s" % (parts.scheme, parts.netloc)

    def queues(self) -> List[Tuple[str, bool]]:
        """(name, is the DLQ) of every queue read: the input queues, then the DLQ."""
        names = [(name, False) for name in input_queues(self.config)]
        dlq = dead_letter_queue(self.config, self.kind)
        if dlq is not None:
            names.append((dlq, True))
        return names

    def read(self) -> List[QueueDepth]:
        """Every queue's depth now; raises ManagementError when the interface cannot be read."""
        wanted = self.queues()
        if self.kind == "activemq":
            found = self._activemq([name for name, _ in wanted])
        elif self.kind == "artemis":
            found = self._artemis([name for name, _ in wanted])
        else:
            found = self._rabbitmq([name for name, _ in wanted])
        return [QueueDepth(name, found.get(name, (0, None))[0], found.get(name, (0, None))[1], dlq)
                for name, dlq in wanted]

    # -- HTTP ------------------------------------------------------------------------------
    def _get(self, path: str) -> Any:
        return self._answer(lambda: self.session.get(self.url + path, timeout=self.config.management_timeout_sec),
                            path)

    def _post(self, body: Any) -> Any:
        # The trailing slash: Jolokia redirects /jolokia to /jolokia/, and a redirected POST becomes a GET.
        return self._answer(lambda: self.session.post(self.url + "/", json=body, allow_redirects=False,
                                                      timeout=self.config.management_timeout_sec), "")

    def _answer(self, call: Any, path: str) -> Any:
        try:
            response = call()
        except requests.RequestException as err:
            raise ManagementError("cannot reach %s: %s" % (self.url, err)) from None
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ManagementError("%s%s answered HTTP %d" % (self.url, path, response.status_code))
        try:
            return response.json()
        except ValueError:
            raise ManagementError("%s%s did not answer JSON" % (self.url, path)) from None

    def _jolokia(self, requests_: List[Dict[str, Any]]) -> List[Any]:
        """The values of a bulk Jolokia request, None where a bean is missing."""
        answers = self._post(requests_)
        if not isinstance(answers, list) or len(answers) != len(requests_):
            raise ManagementError("%s is not a Jolokia endpoint (it answered %.200r)" % (self.url, answers))
        out = []
        for answer in answers:
            status = answer.get("status") if isinstance(answer, dict) else None
            if status == 200:
                out.append(answer.get("value"))
            elif status == 404 or "InstanceNotFound" in str(answer.get("error_type", "")):
                out.append(None)
            else:
                raise ManagementError("Jolokia at %s: %s" % (self.url, answer.get("error", answer)
                                                             if isinstance(answer, dict) else answer))
        return out

    # -- ActiveMQ Classic ------------------------------------------------------------------
    def _activemq(self, names: Sequence[str]) -> Dict[str, Tuple[int, Optional[float]]]:
        pattern = "org.apache.activemq:type=Broker,brokerName=*,destinationType=Queue,destinationName=*"
        (beans,) = self._jolokia([{"type": "read", "mbean": pattern,
                                   "attribute": ["QueueSize", "InFlightCount"]}])
        sizes: Dict[str, Tuple[str, int, int]] = {}
        for bean, values in (beans or {}).items():
            name = _property(bean, "destinationName")
            if name in names and isinstance(values, dict):
                sizes[name] = (bean, int(values.get("QueueSize") or 0), int(values.get("InFlightCount") or 0))
        out: Dict[str, Tuple[int, Optional[float]]] = {}
        now = time.time()
        for name, (bean, size, in_flight) in sizes.items():
            waiting = max(0, size - in_flight)
            age = None
            if waiting:
                (listed,) = self._jolokia([{"type": "exec", "mbean": bean, "operation": "browse()",
                                            "config": {"maxCollectionSize": in_flight + 1, "maxDepth": 3}}])
                stamps = sorted(t for t in (_epoch(m.get("JMSTimestamp")) for m in (listed or [])
                                            if isinstance(m, dict)) if t is not None)
                if stamps:
                    age = max(0.0, now - stamps[min(in_flight, len(stamps) - 1)])
            out[name] = (waiting, age)
        return out

    # -- Artemis ---------------------------------------------------------------------------
    def _artemis_broker(self) -> str:
        if not self._artemis_name:
            (found,) = self._jolokia([{"type": "search", "mbean": "org.apache.activemq.artemis:broker=*"}])
            names = sorted({_property(bean, "broker").strip('"') for bean in found or []})
            if len(names) != 1:
                raise ManagementError("Jolokia at %s shows %d Artemis brokers (%s): set management_broker_name"
                                      % (self.url, len(names), ", ".join(names)))
            self._artemis_name = names[0]
        return self._artemis_name

    def _artemis(self, names: Sequence[str]) -> Dict[str, Tuple[int, Optional[float]]]:
        broker = self._artemis_broker()
        addresses = 'org.apache.activemq.artemis:broker="%s",address="*",component=addresses' % broker
        (counts,) = self._jolokia([{"type": "read", "mbean": addresses, "attribute": ["MessageCount", "Address"]}])
        present = {}
        for values in (counts or {}).values():
            if isinstance(values, dict) and values.get("Address") in names:
                present[values["Address"]] = int(values.get("MessageCount") or 0)
        reads = []
        for name in present:
            bean = ('org.apache.activemq.artemis:broker="%s",component=addresses,address="%s",'
                    'subcomponent=queues,routing-type="anycast",queue="%s"' % (broker, name, name))
            reads.append({"type": "read", "mbean": bean, "attribute": ["DeliveringCount", "FirstMessageAge"]})
        out: Dict[str, Tuple[int, Optional[float]]] = {}
        for (name, count), values in zip(present.items(), self._jolokia(reads) if reads else []):
            delivering = int(values.get("DeliveringCount") or 0) if isinstance(values, dict) else 0
            age_ms = values.get("FirstMessageAge") if isinstance(values, dict) else None
            waiting = max(0, count - delivering)
            out[name] = (waiting, float(age_ms) / 1000.0 if waiting and age_ms is not None else None)
        return out

    # -- RabbitMQ --------------------------------------------------------------------------
    def _rabbitmq(self, names: Sequence[str]) -> Dict[str, Tuple[int, Optional[float]]]:
        vhost = quote(self.config.stomp_vhost or "/", safe="")
        out: Dict[str, Tuple[int, Optional[float]]] = {}
        now = time.time()
        for name in names:
            queue = self._get("/queues/%s/%s" % (vhost, quote(name, safe="")))
            if not isinstance(queue, dict):
                continue
            waiting = int(queue.get("messages_ready") or 0)
            stamp = queue.get("head_message_timestamp")
            age = max(0.0, now - float(stamp)) if waiting and isinstance(stamp, (int, float)) else None
            out[name] = (waiting, age)
        return out


def _epoch(value: Any) -> Optional[float]:
    """A JMS timestamp as Jolokia gives it (milliseconds, or an ISO 8601 date) in Unix seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) / 1000.0
    if isinstance(value, str) and value:
        if value.isdigit():
            return int(value) / 1000.0
        try:
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _property(bean: str, key: str) -> str:
    """The value of ``key`` in a JMX object name ``domain:k=v,...`` (quotes kept)."""
    for part in bean.split(":", 1)[-1].split(","):
        k, _, v = part.partition("=")
        if k == key:
            return v
    return ""


def reader(config: Config) -> Optional[QueueReader]:
    """A reader of the configured management interface, or None when ``management_url`` is empty."""
    if not config.management_url:
        return None
    return QueueReader(config, broker_kind(config))

"""What the agent does with a ping: answer it, unless that would feed a loop or a flood.

Anyone who may publish to the ping topic can ask every agent to send to any destination.
So a ping is not answered when its ``reply_to`` names one of the agent's own destinations
(a reply on the ping topic is itself a ping to every agent; on a run queue it is a run
request), nor beyond ``MAX_BURST`` answers plus ``RATE_PER_SEC`` a second.  Replies never
carry a ``reply_to``.  A refused or dropped ping is logged once per sender per minute.
"""

import logging
import time
from typing import Callable, Dict, Iterable, List, Optional

from postprocessing import logsafe, messages
from postprocessing.agent.heartbeat import ping_reply, reply_destination
from postprocessing.config import Config
from postprocessing.errors import NotConnected
from postprocessing.transport import Delivery, Transport
from postprocessing.transport.validated import validated_user

logger = logging.getLogger(__name__)

RATE_PER_SEC = 2.0
MAX_BURST = 10.0
LOG_EVERY_SEC = 60.0
_FORGET_AFTER = 1000
#: Config keys naming the agent's destinations: inputs, outcomes, its topics.
_OWN_KEYS = (
    "postprocess_error", "reduction_data_ready", "reduction_himem_data_ready", "reduction_started",
    "reduction_complete", "reduction_error", "reduction_disabled", "reduction_not_needed", "reduction_cancel",
    "catalog_data_ready", "catalog_started", "catalog_complete", "catalog_error",
    "reduction_catalog_data_ready", "reduction_catalog_started", "reduction_catalog_complete",
    "reduction_catalog_error", "create_reduction_script", "heart_beat", "heartbeat_ping", "cancel_fanout",
    "fleet_status", "fleet_control",
)


def own_destinations(config: Config) -> List[str]:
    """Every destination the agent consumes or answers on: no ping reply may go there."""
    return [config.destination(key) for key in _OWN_KEYS]


def canonical(destination: str) -> str:
    """The name a broker resolves a destination to (RabbitMQ's ``/amq/queue/`` is ``/queue/``)."""
    if destination.startswith("/amq/queue/"):
        return "/queue/" + destination[len("/amq/queue/"):]
    return destination


class PingPolicy:
    def __init__(self, own_destinations: Iterable[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.own = {canonical(d) for d in own_destinations}
        self._clock = clock
        self._tokens = MAX_BURST
        self._refilled = clock()
        self._logged: Dict[str, float] = {}
        self.refused = 0
        self.dropped = 0

    def refusal(self, reply_to: str) -> Optional[str]:
        """Why a ping must not be answered on ``reply_to``, or None."""
        if canonical(reply_to) in self.own:
            return "reply_to %s is one of the agent's own destinations" % reply_to
        if self._take() is False:
            return "more than %g pings a second" % RATE_PER_SEC
        return None

    def _take(self) -> bool:
        now = self._clock()
        self._tokens = min(MAX_BURST, self._tokens + (now - self._refilled) * RATE_PER_SEC)
        self._refilled = now
        if self._tokens < 1:
            self.dropped += 1
            return False
        self._tokens -= 1
        return True

    def log_refusal(self, sender: Optional[str], reason: str) -> None:
        """Log a refused ping, at most once a minute for each sender."""
        self.refused += 1
        who = sender or "an unauthenticated sender"
        now = self._clock()
        last = self._logged.get(who)
        if last is not None and now - last < LOG_EVERY_SEC:
            return
        if len(self._logged) >= _FORGET_AFTER:
            self._logged = {k: t for k, t in self._logged.items() if now - t < LOG_EVERY_SEC}
        self._logged[who] = now
        logger.warning("ping from %s not answered: %s (%d refused so far; next report for this sender "
                       "in a minute at the earliest)", logsafe.text(who), logsafe.text(reason), self.refused)


def answer_ping(d: Delivery, config: Config, policy: PingPolicy, transport: Transport, hostname: str, pid: int,
                running: int) -> None:
    """Answer a ping on its ``reply_to``, unless the policy refuses it (logged)."""
    ping = reply_destination(d.body, config.max_body_bytes)
    sender = validated_user(d.headers, transport.kind)
    refusal = "no usable reply_to" if ping is None else policy.refusal(ping["reply_to"])
    if ping is None or refusal is not None:
        policy.log_refusal(sender, refusal or "")
        return
    body = messages.encode(ping_reply(ping, hostname, pid, running))
    try:
        transport.send(ping["reply_to"], body, headers={"persistent": "false"})
    except NotConnected:
        logger.info("could not answer ping: not connected")

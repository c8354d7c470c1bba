"""A STOMP client for tests: sends messages and collects what arrives, per destination."""

import collections
import json
import threading
import time
from typing import Any, Dict, List, Optional, Union

import stomp


class Collector(stomp.ConnectionListener):
    def __init__(self, port: int, user: str = "icat", password: str = "icat",
                 vhost: Optional[str] = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.vhost = vhost
        self.user = user
        self.password = password
        self._cond = threading.Condition()
        self.received: Dict[str, List[Dict[str, Any]]] = collections.defaultdict(list)
        self.raw: Dict[str, List[bytes]] = collections.defaultdict(list)
        self.times: Dict[str, List[float]] = collections.defaultdict(list)
        self.headers: Dict[str, List[Dict[str, str]]] = collections.defaultdict(list)
        self._subs: List[str] = []
        self.conn: Optional[stomp.Connection12] = None
        self.connect()

    def connect(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            conn = stomp.Connection12([(self.host, self.port)], auto_decode=False,
                                      reconnect_attempts_max=1, vhost=self.vhost)
            conn.set_listener("collector", self)
            try:
                conn.connect(self.user, self.password, wait=True)
                break
            except stomp.exception.StompException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.conn = conn
        for i, dest in enumerate(self._subs):
            conn.subscribe(dest, id="c%d" % i, ack="auto")

    def reconnect(self, timeout: float = 30.0) -> None:
        try:
            if self.conn is not None:
                self.conn.disconnect()
        except stomp.exception.StompException:
            pass
        self.connect(timeout)

    def subscribe(self, *destinations: str) -> "Collector":
        for dest in destinations:
            self._subs.append(dest)
            assert self.conn is not None
            self.conn.subscribe(dest, id="c%d" % (len(self._subs) - 1), ack="auto")
        time.sleep(0.2)
        return self

    def on_message(self, frame: Any) -> None:
        dest = frame.headers["destination"]
        body = frame.body if isinstance(frame.body, bytes) else frame.body.encode()
        try:
            parsed = json.loads(body.decode("utf-8"))
        except ValueError:
            parsed = {"_raw": body.decode("utf-8", "replace")}
        with self._cond:
            self.raw[dest].append(body)
            self.received[dest].append(parsed)
            self.times[dest].append(time.monotonic())
            self.headers[dest].append(dict(frame.headers))
            self._cond.notify_all()

    def send(self, destination: str, body: Union[Dict[str, Any], str, bytes],
             headers: Optional[Dict[str, str]] = None) -> None:
        if isinstance(body, dict):
            body = json.dumps(body)
        assert self.conn is not None
        self.conn.send(destination, body, headers={"persistent": "true", **(headers or {})})

    def send_vouched(self, destination: str, body: Union[Dict[str, Any], str, bytes],
                     headers: Optional[Dict[str, str]] = None) -> None:
        """Send so that the broker vouches for the sender: RabbitMQ needs ``user-id`` for that.

        (ActiveMQ Classic and Artemis add the validated user themselves when configured to.)"""
        vouch = {"user-id": self.user} if self.vhost is not None else {}
        self.send(destination, body, {**vouch, **(headers or {})})

    def wait(self, destination: str, count: int = 1, timeout: float = 30.0) -> List[Dict[str, Any]]:
        """Wait until ``count`` messages arrived on ``destination``; fails the test otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.received[destination]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("waited %.0f s for %d messages on %s, got %d: %r" % (
                        timeout, count, destination, len(self.received[destination]),
                        self.received[destination][-3:]))
                self._cond.wait(left)
            return list(self.received[destination])

    def total(self, *destinations: str) -> int:
        with self._cond:
            return sum(len(self.received[d]) for d in destinations)

    def wait_total(self, destinations: List[str], count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.total(*destinations) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("waited %.0f s for %d messages on %s, got %d" % (
                        timeout, count, destinations, self.total(*destinations)))
                self._cond.wait(left)

    def get(self, destination: str) -> List[Dict[str, Any]]:
        with self._cond:
            return list(self.received[destination])

    def close(self) -> None:
        try:
            if self.conn is not None:
                self.conn.disconnect()
        except stomp.exception.StompException:
            pass


def distinct(collectors: List[Collector], destination: str) -> List[Dict[str, Any]]:
    """What ``collectors`` received on ``destination``, a broker's redelivery of one message once.

    Artemis marks each SEND of the agent with ``_AMQ_DUPL_ID`` (and drops a re-send of it), so two
    copies with one id are one stored message delivered twice, for example again after a broker
    SIGKILL lost a test client's acknowledgement, or by the backup of an HA pair.  Without the
    header (ActiveMQ Classic, RabbitMQ) every copy counts."""
    seen, out = set(), []
    for c in collectors:
        with c._cond:
            pairs = list(zip(c.received[destination], c.headers[destination]))
        for body, headers in pairs:
            dupl = headers.get("_AMQ_DUPL_ID")
            if dupl is not None and dupl in seen:
                continue
            seen.add(dupl)
            out.append(body)
    return out

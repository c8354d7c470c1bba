"""The harness's STOMP client: outcomes timed by the wall clock, sends confirmed by receipt.

Sends wait for the broker's receipt and are retried after a disconnect, never because a
receipt is slow.  The harness never kills the broker while a send is in flight
(``send_lock``), so a request it counts as sent is in the broker exactly once.
"""

import itertools
import json
import threading
import time
from typing import Any, Dict, List, Tuple

import stomp

from tests.support.client import Collector

Received = Tuple[float, str, Dict[str, Any]]


class ChaosClient(Collector):
    def __init__(self, broker: Any, destinations: List[str]) -> None:
        self.send_lock = threading.Lock()
        self.log: List[Received] = []
        self._receipts: Dict[str, threading.Event] = {}
        self._ids = itertools.count(1)
        self._down = threading.Event()
        super().__init__(broker.port, broker.user, broker.password,
                         vhost="/" if broker.kind == "rabbitmq" else None, host=broker.host)
        self.subscribe(*destinations)

    def on_message(self, frame: Any) -> None:
        body = frame.body if isinstance(frame.body, bytes) else frame.body.encode()
        try:
            parsed = json.loads(body.decode("utf-8"))
        except ValueError:
            parsed = {"_raw": body.decode("utf-8", "replace")}
        with self._cond:
            self.log.append((time.time(), frame.headers["destination"], parsed))
        super().on_message(frame)

    def on_receipt(self, frame: Any) -> None:
        event = self._receipts.get(frame.headers.get("receipt-id", ""))
        if event is not None:
            event.set()

    def on_disconnected(self) -> None:
        self._down.set()

    def ensure_connected(self, timeout: float = 600.0) -> None:
        if self._down.is_set() or self.conn is None or not self.conn.is_connected():
            self.reconnect(timeout)
            self._down.clear()

    def send_confirmed(self, destination: str, body: Dict[str, Any], timeout: float = 600.0) -> None:
        """Send persistent, and return once the broker confirmed it (reconnecting as needed)."""
        deadline = time.monotonic() + timeout
        with self.send_lock:
            while True:
                receipt = "h%d" % next(self._ids)
                event = self._receipts[receipt] = threading.Event()
                try:
                    self.ensure_connected(max(1.0, deadline - time.monotonic()))
                    assert self.conn is not None
                    self.conn.send(destination, json.dumps(body),
                                   headers={"persistent": "true", "receipt": receipt})
                    if self._receipt(event, deadline):
                        return
                except (stomp.exception.StompException, OSError):
                    pass
                finally:
                    del self._receipts[receipt]
                if time.monotonic() > deadline:
                    raise AssertionError("the broker confirmed no send to %s in %.0f s" % (destination, timeout))
                self._down.set()
                time.sleep(0.5)

    def _receipt(self, event: threading.Event, deadline: float) -> bool:
        """Wait for the receipt while the connection stands: a send is resent only after a disconnect
        (a slow receipt is no reason to send a second copy)."""
        while not event.wait(0.5):
            if self._down.is_set() or time.monotonic() > deadline:
                return False
        return True

    def outcomes(self, since: int = 0) -> List[Received]:
        """What arrived, from the ``since``-th message on."""
        with self._cond:
            return self.log[since:]

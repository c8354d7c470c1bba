"""Read what sits in a queue of the test broker, headers included, and put things in it."""

import json
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import stomp

Message = Tuple[Dict[str, str], Dict[str, Any]]


class _Listener(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.messages: List[Tuple[Dict[str, str], bytes]] = []
        self.receipts: List[str] = []

    def on_receipt(self, frame: Any) -> None:
        with self.cond:
            self.receipts.append(frame.headers.get("receipt-id", ""))
            self.cond.notify_all()

    def on_message(self, frame: Any) -> None:
        body = frame.body if isinstance(frame.body, bytes) else frame.body.encode()
        with self.cond:
            self.messages.append((dict(frame.headers), body))
            self.cond.notify_all()


def connect(broker: Any) -> Tuple[Any, _Listener]:
    """A STOMP connection to the test broker (ActiveMQ or RabbitMQ) with a listener."""
    vhost = "/" if getattr(broker, "kind", "activemq") == "rabbitmq" else None
    conn = stomp.Connection12([("127.0.0.1", broker.port)], auto_decode=False, reconnect_attempts_max=1,
                              vhost=vhost)
    listener = _Listener()
    conn.set_listener("q", listener)
    conn.connect(broker.user, broker.password, wait=True)
    return conn, listener


def take(broker: Any, destination: str, count: int, timeout: float = 30.0, settle: float = 0.5) -> List[Message]:
    """Consume ``count`` messages (and any that follow within ``settle`` s); parsed JSON bodies."""
    conn, listener = connect(broker)
    try:
        conn.subscribe(destination, id="take", ack="auto")
        deadline = time.monotonic() + timeout
        with listener.cond:
            while len(listener.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                listener.cond.wait(left)
        time.sleep(settle)
        with listener.cond:
            got = list(listener.messages)
    finally:
        conn.disconnect()
    out = []
    for headers, body in got:
        try:
            parsed = json.loads(body.decode("utf-8"))
        except ValueError:
            parsed = {"_raw": body.decode("utf-8", "replace")}
        out.append((headers, parsed))
    return out


def send(broker: Any, destination: str, body: Any, headers: Optional[Dict[str, str]] = None) -> None:
    """Send a persistent message and wait for the broker's receipt."""
    send_many(broker, destination, [body], headers)


def send_many(broker: Any, destination: str, bodies: List[Any], headers: Optional[Dict[str, str]] = None) -> None:
    """Send persistent messages on one connection and wait for the broker's receipt of each."""
    conn, listener = connect(broker)
    try:
        for index, body in enumerate(bodies):
            text = body if isinstance(body, (str, bytes)) else json.dumps(body)
            conn.send(destination, text, headers={"persistent": "true", "receipt": "sent-%d" % index,
                                                  **(headers or {})})
        with listener.cond:
            if not listener.cond.wait_for(lambda: len(listener.receipts) >= len(bodies), timeout=60):
                raise AssertionError("the broker confirmed %d of %d messages to %s"
                                     % (len(listener.receipts), len(bodies), destination))
    finally:
        conn.disconnect()

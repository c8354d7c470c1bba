"""The STOMP transport: a small class around stomp.py, the package's only stomp user."""

import logging
import socket
import threading
from typing import Any, Mapping, Optional, Sequence, Tuple

import stomp
from stomp.exception import StompException

from postprocessing.errors import NotConnected, TransportError
from postprocessing.transport import Delivery, Disconnected, Receipt, Sink

logger = logging.getLogger(__name__)

_PREFETCH_HEADER = {"activemq": "activemq.prefetchSize", "rabbitmq": "prefetch-count"}


class _Listener(stomp.ConnectionListener):  # type: ignore[misc]
    """Runs on stomp.py's receiver thread: it only records and enqueues."""

    def __init__(self, epoch: int, sink: Sink) -> None:
        self.epoch = epoch
        self.sink = sink
        self.connected = threading.Event()
        self.finished = threading.Event()
        self.error = ""

    def on_connected(self, frame: Any) -> None:
        self.connected.set()

    def on_error(self, frame: Any) -> None:
        self.error = frame.headers.get("message", "broker error")
        logger.error("broker error: %s", self.error)

    def on_message(self, frame: Any) -> None:
        headers = frame.headers
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode("utf-8")
        self.sink(Delivery(
            destination=headers.get("destination", ""),
            body=body,
            headers=dict(headers),
            subscription=headers.get("subscription", ""),
            ack_id=headers.get("ack", headers.get("message-id", "")),
            message_id=headers.get("message-id", ""),
            epoch=self.epoch,
        ))

    def on_receipt(self, frame: Any) -> None:
        self.sink(Receipt(frame.headers.get("receipt-id", ""), self.epoch))

    def on_disconnected(self) -> None:
        was_connected = self.connected.is_set()
        self.finished.set()
        if was_connected:
            self.sink(Disconnected(self.epoch, self.error or "connection lost"))


class StompTransport:
    """One STOMP 1.2 connection at a time, to the first broker of the list that answers."""

    def __init__(self, brokers: Sequence[Tuple[str, int]], user: str, password: str, sink: Sink,
                 heartbeat_ms: int = 10000, connect_timeout: float = 5.0,
                 broker_type: str = "activemq", vhost: str = "") -> None:
        self._brokers = list(brokers)
        self._user = user
        self._password = password
        self._sink = sink
        self._heartbeat_ms = heartbeat_ms
        self._timeout = connect_timeout
        self._prefetch_header = _PREFETCH_HEADER[broker_type]
        self._nack_requeues = broker_type == "rabbitmq"
        self.returns_on_unsubscribe = not self._nack_requeues
        self._vhost = vhost or ("/" if broker_type == "rabbitmq" else None)
        self._conn: Optional[Any] = None
        self.epoch = 0
        self.connected_to = ""
        self.connected_index = -1

    def connect(self) -> None:
        self.disconnect()
        reasons = []
        for index, (host, port) in enumerate(self._brokers):
            epoch = self.epoch + 1
            listener = _Listener(epoch, self._sink)
            conn = stomp.Connection12(
                host_and_ports=[(host, port)], heartbeats=(self._heartbeat_ms, self._heartbeat_ms),
                reconnect_attempts_max=1, timeout=self._timeout, auto_decode=False, vhost=self._vhost,
            )
            conn.set_listener("agent", listener)
            try:
                conn.connect(self._user, self._password, wait=False)
            except (StompException, OSError) as err:
                reasons.append("%s:%d %s" % (host, port, type(err).__name__))
                continue
            if not listener.connected.wait(self._timeout) or listener.finished.is_set():
                reasons.append("%s:%d %s" % (host, port, listener.error or "no CONNECTED frame"))
                self._close(conn)
                continue
            _no_delay(conn)
            self._conn = conn
            self.epoch = epoch
            self.connected_to = "%s:%d" % (host, port)
            self.connected_index = index
            return
        raise TransportError("no broker answered: " + "; ".join(reasons))

    def primary_reachable(self) -> bool:
        """Whether the first broker of the list accepts TCP connections (when on another one)."""
        if self.connected_index <= 0:
            return False
        try:
            with socket.create_connection(self._brokers[0], timeout=self._timeout):
                return True
        except OSError:
            return False

    def _live(self) -> Any:
        if self._conn is None or not self._conn.is_connected():
            raise NotConnected("not connected to a broker")
        return self._conn

    def subscribe(self, destination: str, sub_id: str, client_ack: bool, prefetch: int) -> None:
        headers = {self._prefetch_header: str(prefetch)} if client_ack else {}
        try:
            self._live().subscribe(destination, id=sub_id,
                                   ack="client-individual" if client_ack else "auto", headers=headers)
        except (StompException, OSError) as err:
            raise NotConnected(str(err)) from None

    def unsubscribe(self, sub_id: str) -> None:
        try:
            self._live().unsubscribe(id=sub_id)
        except (StompException, OSError) as err:
            raise NotConnected(str(err)) from None

    def send(self, destination: str, body: bytes, receipt: Optional[str] = None,
             headers: Optional[Mapping[str, str]] = None) -> None:
        frame_headers = {"persistent": "true"}
        if headers:
            frame_headers.update(headers)
        if receipt is not None:
            frame_headers["receipt"] = receipt
        try:
            self._live().send(destination, body, headers=frame_headers)
        except (StompException, OSError) as err:
            raise NotConnected(str(err)) from None

    def ack(self, delivery: Delivery, receipt: Optional[str] = None) -> None:
        if delivery.epoch != self.epoch:
            raise NotConnected("delivery belongs to an earlier connection")
        try:
            self._live().ack(delivery.ack_id, receipt=receipt)
        except (StompException, OSError) as err:
            raise NotConnected(str(err)) from None

    def release(self, delivery: Delivery) -> None:
        """Hand an un-acked delivery back to the broker for another consumer.

        ActiveMQ takes it back when its subscription goes (a NACK would dead-letter it);
        RabbitMQ keeps it on the channel after an UNSUBSCRIBE, but requeues it on NACK.
        """
        if not self._nack_requeues or delivery.epoch != self.epoch:
            return
        try:
            self._live().nack(delivery.ack_id, requeue="true")
        except (StompException, OSError) as err:
            raise NotConnected(str(err)) from None

    def disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._close(conn)

    @staticmethod
    def _close(conn: Any) -> None:
        try:
            conn.disconnect()
        except (StompException, OSError) as err:
            logger.debug("disconnect: %s", err)
        conn.transport.stop()


def _no_delay(conn: Any) -> None:
    """Send each frame at once: without TCP_NODELAY, Nagle holds small frames for an ACK."""
    sock = getattr(conn.transport, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as err:
            logger.debug("TCP_NODELAY: %s", err)

"""The STOMP transport: a small class around stomp.py, the package's only stomp user.

What differs between brokers stays here, chosen by the broker's kind (``broker_type``, or
with ``auto`` the CONNECTED frame's ``server`` header):

- the prefetch header: ActiveMQ Classic ``activemq.prefetchSize`` (messages), Artemis
  ``consumer-window-size`` (bytes: 1 lets one message out at a time), RabbitMQ
  ``prefetch-count``;
- giving a run back: Classic and Artemis requeue what a dropped subscription held (both
  dead-letter or discard on NACK); RabbitMQ requeues on NACK only;
- a delivery's identity: Artemis prefixes ``message-id`` with the consumer's id, so it
  changes on every redelivery; the message's own id is the part after the comma;
- a delayed re-send: ``AMQ_SCHEDULED_DELAY`` on Classic and Artemis; RabbitMQ has no
  scheduler, so the message waits in ``<queue>.DELAY`` for its ``expiration`` and is
  dead-lettered back to the queue;
- a SEND re-sent because its receipt was lost: Artemis drops it as a duplicate, by the
  ``_AMQ_DUPL_ID`` the agent gives every SEND with a receipt (unique to the transport and the
  receipt, so the same for every re-send).

Deliveries are routed by the subscription they came on: Artemis may deliver a message from
a Core or AMQP producer with a bare address as its ``destination``.
"""

import logging
import socket
import threading
import uuid
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import stomp
from stomp.exception import StompException

from postprocessing.errors import NotConnected, TransportError
from postprocessing.transport import Delivery, Disconnected, Receipt, SendRefused, Sink, broker_time

logger = logging.getLogger(__name__)

#: What a call into stomp.py raises when the connection breaks under it.  AttributeError too:
#: its receiver thread sets the socket to None while another thread is between its
#: ``socket is not None`` check and ``sendall`` (or ``getsockname``).
_LINK_ERRORS = (StompException, OSError, AttributeError)

BROKER_KINDS = ("activemq", "artemis", "rabbitmq")
_SCHEDULED_DELAY = "AMQ_SCHEDULED_DELAY"
_DUPLICATE_ID = "_AMQ_DUPL_ID"


def broker_kind(server: str) -> str:
    """The kind of broker a CONNECTED frame's ``server`` header names ("" when unknown)."""
    name = server.lower()
    if "artemis" in name:
        return "artemis"
    if name.startswith("rabbitmq"):
        return "rabbitmq"
    if name.startswith("activemq"):
        return "activemq"
    return ""


def prefetch_headers(kind: str, prefetch: int) -> Dict[str, str]:
    """The SUBSCRIBE header that lets at most ``prefetch`` un-acked messages out."""
    if kind == "artemis":
        # A window in bytes: 1 lets exactly one message out until it is acked; more than
        # one message is asked for only by operator tools, which read what they need.
        return {"consumer-window-size": "1" if prefetch <= 1 else "-1"}
    if kind == "rabbitmq":
        return {"prefetch-count": str(prefetch)}
    return {"activemq.prefetchSize": str(prefetch)}


def delayed(kind: str, destination: str, headers: Dict[str, str]) -> str:
    """Rewrite a SEND that asks for ``AMQ_SCHEDULED_DELAY`` for a broker without a scheduler.

    RabbitMQ: the message goes to ``<queue>.DELAY``, which has no consumer, with an
    ``expiration`` and a dead-letter route back to ``<queue>``.  Returns the destination.
    """
    if kind != "rabbitmq" or _SCHEDULED_DELAY not in headers:
        return destination
    delay = headers.pop(_SCHEDULED_DELAY)
    name = destination[len("/queue/"):] if destination.startswith("/queue/") else destination
    headers.update({"expiration": delay, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": name})
    return "/queue/%s.DELAY" % name


class _Listener(stomp.ConnectionListener):  # type: ignore[misc]
    """Runs on stomp.py's receiver thread: it only records and enqueues."""

    def __init__(self, epoch: int, sink: Sink, broker_type: str, routes: Dict[str, str],
                 untimed_told: threading.Event) -> None:
        self.epoch = epoch
        #: Set once the log has said that this RabbitMQ stamps no broker time (shared by the
        #: transport's connections, so it is said once).
        self.untimed_told = untimed_told
        self.sink = sink
        self.broker_type = broker_type
        self.kind = broker_type
        self.routes = routes
        self.connected = threading.Event()
        self.finished = threading.Event()
        self.error = ""
        self.server = ""

    def on_connected(self, frame: Any) -> None:
        self.server = frame.headers.get("server", "")
        if self.broker_type == "auto":
            self.kind = broker_kind(self.server) or "activemq"
        self.connected.set()

    def on_error(self, frame: Any) -> None:
        message = frame.headers.get("message", "broker error")
        receipt = frame.headers.get("receipt-id")
        if receipt is not None and self.connected.is_set():
            # Artemis 2.40 refuses a SEND (no permission, address full with FAIL, no such
            # address) this way, then closes the connection.
            logger.error("broker refused frame %s: %s", receipt, message)
            self.sink(SendRefused(receipt, self.epoch, message))
            message = "refused frame %s: %s" % (receipt, message)
        self.error = message
        logger.error("broker error: %s", self.error)

    def on_message(self, frame: Any) -> None:
        headers = frame.headers
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode("utf-8")
        subscription = headers.get("subscription", "")
        message_id = headers.get("message-id", "")
        if self.kind == "artemis":
            message_id = message_id.rpartition(",")[2]
        sent_ms = broker_time(self.kind, headers)
        if sent_ms is None and self.kind == "rabbitmq" and not self.untimed_told.is_set():
            self.untimed_told.set()
            logger.warning("RabbitMQ stamps no broker time on its messages (timestamp_in_ms): a standing cancel "
                           "then stops any request for its run that comes within cancel_window_sec. Turn on "
                           "RabbitMQ's timestamp interceptor (docs/brokers.md)")
        self.sink(Delivery(
            destination=self.routes.get(subscription, headers.get("destination", "")),
            body=body,
            headers=dict(headers),
            subscription=subscription,
            ack_id=headers.get("ack", headers.get("message-id", "")),
            message_id=message_id,
            epoch=self.epoch,
            broker_time_ms=sent_ms,
        ))

    def on_receipt(self, frame: Any) -> None:
        self.sink(Receipt(frame.headers.get("receipt-id", ""), self.epoch))

    def on_disconnected(self) -> None:
        was_connected = self.connected.is_set()
        self.finished.set()
        if was_connected:
            self.sink(Disconnected(self.epoch, self.error or "connection lost"))


class StompTransport:
    """One STOMP 1.2 connection at a time, to the first broker of the list that answers.

    ``broker_type`` is one of :data:`BROKER_KINDS`, or ``auto`` to go by the broker's
    ``server`` header; ``kind`` is the kind of the broker connected to.
    """

    def __init__(self, brokers: Sequence[Tuple[str, int]], user: str, password: str, sink: Sink,
                 heartbeat_ms: int = 10000, connect_timeout: float = 5.0,
                 broker_type: str = "auto", vhost: str = "") -> None:
        if broker_type != "auto" and broker_type not in BROKER_KINDS:
            raise ValueError("unknown broker_type %r" % broker_type)
        self._brokers = list(brokers)
        self._user = user
        self._password = password
        self._sink = sink
        self._heartbeat_ms = heartbeat_ms
        self._timeout = connect_timeout
        self._broker_type = broker_type
        # ActiveMQ and Artemis ignore the host header; RabbitMQ reads it as the virtual host.
        self._vhost = vhost or ("/" if broker_type in ("rabbitmq", "auto") else None)
        self._conn: Optional[Any] = None
        self._routes: Dict[str, str] = {}
        self._instance = uuid.uuid4().hex
        self._untimed_told = threading.Event()
        self.kind = broker_type if broker_type != "auto" else "activemq"
        self.epoch = 0
        self.connected_to = ""
        self.connected_index = -1

    @property
    def returns_on_unsubscribe(self) -> bool:
        """Whether dropping a subscription requeues its un-acked messages (not on RabbitMQ)."""
        return self.kind != "rabbitmq"

    @property
    def forgets_confirmed_acks(self) -> bool:
        """RabbitMQ confirms an ACK before it is on disk (measured: every ACK confirmed just before
        a SIGKILL came back, marked redelivered).  ActiveMQ and Artemis sync it first."""
        return self.kind == "rabbitmq"

    def connect(self) -> None:
        self.disconnect()
        reasons = []
        for index, (host, port) in enumerate(self._brokers):
            epoch = self.epoch + 1
            routes: Dict[str, str] = {}
            listener = _Listener(epoch, self._sink, self._broker_type, routes, self._untimed_told)
            conn = stomp.Connection12(
                host_and_ports=[(host, port)], heartbeats=(self._heartbeat_ms, self._heartbeat_ms),
                reconnect_attempts_max=1, timeout=self._timeout, auto_decode=False, vhost=self._vhost,
            )
            conn.set_listener("agent", listener)
            try:
                conn.connect(self._user, self._password, wait=False)
            except _LINK_ERRORS as err:
                reasons.append("%s:%d %s" % (host, port, type(err).__name__))
                continue
            if not listener.connected.wait(self._timeout) or listener.finished.is_set():
                reasons.append("%s:%d %s" % (host, port, listener.error or "no CONNECTED frame"))
                self._close(conn)
                continue
            _no_delay(conn)
            self._conn = conn
            self._routes = routes
            self.kind = listener.kind
            self.epoch = epoch
            self.connected_to = "%s:%d" % (host, port)
            self.connected_index = index
            if self._broker_type == "auto":
                logger.info("broker %s is %s (%s)", self.connected_to, self.kind, listener.server or "no server header")
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
        try:
            live = self._conn is not None and self._conn.is_connected()
        except _LINK_ERRORS:
            live = False
        if not live:
            raise NotConnected("not connected to a broker")
        return self._conn

    def subscribe(self, destination: str, sub_id: str, client_ack: bool, prefetch: int) -> None:
        headers = prefetch_headers(self.kind, prefetch) if client_ack else {}
        conn = self._live()
        self._routes[sub_id] = destination
        try:
            conn.subscribe(destination, id=sub_id, ack="client-individual" if client_ack else "auto",
                           headers=headers)
        except _LINK_ERRORS as err:
            raise NotConnected(str(err)) from None

    def unsubscribe(self, sub_id: str) -> None:
        try:
            self._live().unsubscribe(id=sub_id)
        except _LINK_ERRORS as err:
            raise NotConnected(str(err)) from None
        self._routes.pop(sub_id, None)

    def send(self, destination: str, body: bytes, receipt: Optional[str] = None,
             headers: Optional[Mapping[str, str]] = None) -> None:
        frame_headers = {"persistent": "true"}
        if headers:
            frame_headers.update(headers)
        destination = delayed(self.kind, destination, frame_headers)
        if receipt is not None:
            frame_headers["receipt"] = receipt
            if self.kind == "artemis":
                # Unique to this transport and receipt, so the same on a re-send after a lost
                # receipt (the outbox keeps the receipt), which Artemis then drops.
                frame_headers[_DUPLICATE_ID] = "%s-%s" % (self._instance, receipt)
        try:
            self._live().send(destination, body, headers=frame_headers)
        except _LINK_ERRORS as err:
            raise NotConnected(str(err)) from None

    def ack(self, delivery: Delivery, receipt: Optional[str] = None) -> None:
        if delivery.epoch != self.epoch:
            raise NotConnected("delivery belongs to an earlier connection")
        try:
            self._live().ack(delivery.ack_id, receipt=receipt)
        except _LINK_ERRORS as err:
            raise NotConnected(str(err)) from None

    def release(self, delivery: Delivery) -> None:
        """Hand an un-acked delivery back to the broker for another consumer.

        ActiveMQ and Artemis take it back when its subscription goes (a NACK would
        dead-letter or discard it); RabbitMQ keeps it on the channel after an UNSUBSCRIBE,
        but requeues it on NACK.
        """
        if self.returns_on_unsubscribe or delivery.epoch != self.epoch:
            return
        try:
            self._live().nack(delivery.ack_id, requeue="true")
        except _LINK_ERRORS as err:
            raise NotConnected(str(err)) from None

    def disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._close(conn)

    @staticmethod
    def _close(conn: Any) -> None:
        try:
            conn.disconnect()
        except _LINK_ERRORS as err:
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

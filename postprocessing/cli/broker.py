"""A short-lived broker connection for the operator commands (requeue, ping, dlq).

It wraps the agent's :class:`~postprocessing.transport.stomp.StompTransport` and
turns its events into blocking calls: send with receipts and wait for them, and
collect deliveries until the broker has nothing more to give.
"""

import collections
import itertools
import logging
import queue
import time
from typing import Any, Callable, Deque, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from postprocessing import messages
from postprocessing.config import Config
from postprocessing.errors import InvalidMessage, NotConnected, TransportError
from postprocessing.transport import Delivery, Disconnected, Receipt
from postprocessing.transport.stomp import StompTransport

logger = logging.getLogger(__name__)

#: A message to send: destination, body and extra headers.
Outgoing = Tuple[str, bytes, Mapping[str, str]]


class BrokerSession:
    """One connection, used from one thread; use it as a context manager."""

    def __init__(self, cfg: Config, receipt_timeout: float = 30.0) -> None:
        self._events: queue.Queue[object] = queue.Queue()
        self._transport = StompTransport(
            cfg.brokers, cfg.amq_user, cfg.amq_pwd, self._events.put,
            heartbeat_ms=cfg.stomp_heartbeat_ms, connect_timeout=cfg.connect_timeout_sec,
            broker_type=cfg.broker_type, vhost=cfg.stomp_vhost)
        self._receipt_timeout = receipt_timeout
        self._max_body = cfg.max_body_bytes
        self._ids = itertools.count(1)
        self._deliveries: Deque[Delivery] = collections.deque()
        self._receipts: Dict[str, None] = {}

    def __enter__(self) -> "BrokerSession":
        try:
            self._transport.connect()
        except TransportError as err:
            raise TransportError("cannot connect to the broker: %s" % err) from None
        logger.debug("connected to %s", self._transport.connected_to)
        return self

    def __exit__(self, *exc: object) -> None:
        self._transport.disconnect()

    @property
    def connected_to(self) -> str:
        return self._transport.connected_to

    @property
    def broker_kind(self) -> str:
        """The kind of broker connected to: activemq, artemis or rabbitmq."""
        return self._transport.kind

    # -- events ------------------------------------------------------------------------
    def _next_event(self, timeout: float) -> Optional[object]:
        try:
            event = self._events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if isinstance(event, Disconnected) and event.epoch == self._transport.epoch:
            raise TransportError("lost the broker connection: %s" % event.reason)
        if isinstance(event, Delivery):
            self._deliveries.append(event)
        elif isinstance(event, Receipt):
            self._receipts[event.receipt_id] = None
        return event

    # -- sending -------------------------------------------------------------------------
    def send(self, messages: Sequence[Outgoing], on_confirm: Optional[Callable[[int], None]] = None,
             window: int = 100) -> int:
        """Send persistent messages, each with a receipt; returns how many the broker confirmed.

        ``on_confirm(i)`` is called, in order, once the broker has confirmed message ``i``.
        Raises TransportError when the connection fails or a receipt does not come.
        """
        pending: Deque[Tuple[int, str]] = collections.deque()
        confirmed = 0
        for index, (destination, body, headers) in enumerate(messages):
            receipt = "pp-cli-%d" % next(self._ids)
            self._send(destination, body, receipt, headers)
            pending.append((index, receipt))
            while len(pending) >= window:
                confirmed += self._confirm_first(pending, on_confirm)
        while pending:
            confirmed += self._confirm_first(pending, on_confirm)
        return confirmed

    def _send(self, destination: str, body: bytes, receipt: str, headers: Mapping[str, str]) -> None:
        try:
            self._transport.send(destination, body, receipt=receipt, headers=headers)
        except NotConnected as err:
            raise TransportError("lost the broker connection: %s" % err) from None

    def _confirm_first(self, pending: "Deque[Tuple[int, str]]",
                       on_confirm: Optional[Callable[[int], None]]) -> int:
        index, receipt = pending[0]
        deadline = time.monotonic() + self._receipt_timeout
        while receipt not in self._receipts:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError("the broker did not confirm a message in %.0f s" % self._receipt_timeout)
            self._next_event(left)
        del self._receipts[receipt]
        pending.popleft()
        if on_confirm is not None:
            on_confirm(index)
        return 1

    def publish(self, destination: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Send without waiting for a receipt (for non-persistent requests such as pings)."""
        try:
            self._transport.send(destination, body, headers=headers)
        except NotConnected as err:
            raise TransportError("lost the broker connection: %s" % err) from None

    # -- receiving -----------------------------------------------------------------------
    def subscribe(self, destination: str, client_ack: bool, prefetch: int = 1) -> str:
        sub_id = "pp-cli-sub-%d" % next(self._ids)
        try:
            self._transport.subscribe(destination, sub_id, client_ack=client_ack, prefetch=prefetch)
        except NotConnected as err:
            raise TransportError("cannot subscribe to %s: %s" % (destination, err)) from None
        return sub_id

    def receive(self, timeout: float) -> Optional[Delivery]:
        """The next delivery, or None when none arrives within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self._deliveries:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._next_event(left)
        return self._deliveries.popleft()

    def replies(self, deadline: float) -> Iterator[Dict[str, Any]]:
        """The JSON objects that arrive until ``deadline`` (monotonic); anything else is skipped."""
        while True:
            delivery = self.receive(deadline - time.monotonic())
            if delivery is None:
                return
            try:
                yield messages.decode_body(delivery.body, self._max_body)
            except InvalidMessage:
                continue

    def drain(self, first_wait: float, idle: float, limit: int) -> List[Delivery]:
        """Deliveries until ``limit`` arrived or none came for ``idle`` seconds."""
        out: List[Delivery] = []
        wait = first_wait
        while len(out) < limit:
            delivery = self.receive(wait)
            if delivery is None:
                break
            out.append(delivery)
            wait = idle
        return out

    def ack(self, delivery: Delivery) -> None:
        try:
            self._transport.ack(delivery)
        except NotConnected as err:
            raise TransportError("cannot acknowledge message %s: %s" % (delivery.message_id, err)) from None

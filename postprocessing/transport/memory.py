"""An in-memory transport for unit tests: a tiny broker with queue semantics.

It keeps what a real broker would: messages wait in their queue until a subscription
with room takes them; un-acked messages return to the queue when their subscription or
connection goes; receipts come back at once.  Everything is delivered through ``sink``,
as the real transport does, so the agent's loop sees the same events.
"""

import collections
import itertools
import time
from typing import Deque, Dict, List, Mapping, Optional, Tuple

from postprocessing.errors import NotConnected
from postprocessing.transport import Delivery, Disconnected, Receipt, SendRefused, Sink, broker_time

_Message = Tuple[str, bytes, Dict[str, str]]


class MemoryTransport:
    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._ids = itertools.count(1)
        self.queues: Dict[str, Deque[_Message]] = collections.defaultdict(collections.deque)
        self.sent: List[Tuple[str, bytes, Dict[str, str]]] = []
        self.acked: List[str] = []
        #: Deliveries given back by NACK (RabbitMQ-like, see :meth:`release`).
        self.released: List[str] = []
        self.subscriptions: Dict[str, Tuple[str, int, bool]] = {}
        self._held: Dict[str, Dict[str, _Message]] = collections.defaultdict(dict)
        self.epoch = 0
        self.connected_to = ""
        self.connected = False
        self.refuse_connect = False
        #: Like RabbitMQ: every delivery gets a new message id.
        self.fresh_ids = False
        self.connected_index = -1
        self.returns_on_unsubscribe = True
        self.kind = "activemq"
        #: Set by tests: the connection is to a backup and the primary is back.
        self.primary_back = False
        #: Like Artemis: deliveries name their queue without the ``/queue/`` prefix.
        self.bare_destinations = False
        #: Like a connection that dies right after an ACK left: the broker never gets it.
        self.lose_acks = False
        #: Like a broker SIGKILLed before it stored the ACKs it confirmed: a dropped connection puts
        #: the messages it acked back on their queues, redelivered.
        self.forget_acks_on_drop = False
        #: What the agent is told about the broker's ACKs (``forget_acks_on_drop`` is what happens).
        self.forgets_confirmed_acks = False
        self._acked_here: List[Tuple[str, _Message]] = []
        #: ACK receipts wait here until :meth:`release_ack_receipts` (an ACK still in flight).
        self.hold_ack_receipts = False
        self.held_ack_receipts: List[Receipt] = []
        #: Like Artemis: the connection is closed right after a refused send.
        self.close_on_refusal = False
        #: Like ActiveMQ Classic and Artemis: every message taken in gets a ``timestamp`` (ms);
        #: off, like a RabbitMQ without its timestamp interceptor.
        self.stamps_time = True
        #: destination -> (how many more sends to refuse, why): see :meth:`refuse`.
        self._refusals: Dict[str, Tuple[int, str]] = {}

    # -- the Transport interface ---------------------------------------------------
    def connect(self) -> None:
        if self.refuse_connect:
            raise NotConnected("memory broker refuses connections")
        self.epoch += 1
        self.connected = True
        self.connected_to = "memory"
        self.connected_index = 0 if self.primary_back else max(self.connected_index, 0)

    def primary_reachable(self) -> bool:
        return self.connected_index > 0 and self.primary_back

    def subscribe(self, destination: str, sub_id: str, client_ack: bool, prefetch: int) -> None:
        self._check()
        self.subscriptions[sub_id] = (destination, prefetch, client_ack)
        self._pump(destination)

    def unsubscribe(self, sub_id: str) -> None:
        self._check()
        destination = self.subscriptions[sub_id][0]
        self._return_held(sub_id)
        del self.subscriptions[sub_id]
        self._pump(destination)

    def send(self, destination: str, body: bytes, receipt: Optional[str] = None,
             headers: Optional[Mapping[str, str]] = None) -> None:
        self._check()
        times, reason = self._refusals.get(destination, (0, ""))
        if times and receipt is not None:
            self._refusals[destination] = (times - 1, reason)
            self._sink(SendRefused(receipt, self.epoch, reason))
            if self.close_on_refusal:
                self.drop_connection("refused frame %s: %s" % (receipt, reason))
            return
        frame_headers = {"persistent": "true", **(headers or {})}
        self.sent.append((destination, body, frame_headers))
        if not destination.startswith("/topic/"):
            self.publish(destination, body, frame_headers)
        if receipt is not None:
            self._sink(Receipt(receipt, self.epoch))

    def ack(self, delivery: Delivery, receipt: Optional[str] = None) -> None:
        self._check()
        if delivery.epoch != self.epoch:
            raise NotConnected("delivery belongs to an earlier connection")
        if self.lose_acks:
            return
        held = self._held[delivery.subscription]
        message = held.pop(delivery.message_id, None)
        if message is None:
            raise NotConnected("unknown delivery %s" % delivery.message_id)
        self._acked_here.append((self.subscriptions[delivery.subscription][0], message))
        self.acked.append(delivery.message_id)
        if receipt is not None and self.hold_ack_receipts:
            self.held_ack_receipts.append(Receipt(receipt, self.epoch))
        elif receipt is not None:
            self._sink(Receipt(receipt, self.epoch))
        self._pump(self.subscriptions[delivery.subscription][0])

    def release(self, delivery: Delivery) -> None:
        """As on ActiveMQ, nothing (dropping the subscription returns what it held); with
        ``returns_on_unsubscribe`` off, as on RabbitMQ, a NACK that requeues it at the head."""
        if self.returns_on_unsubscribe:
            return
        self._check()
        message = self._held[delivery.subscription].pop(delivery.message_id, None)
        if message is None:
            raise NotConnected("unknown delivery %s" % delivery.message_id)
        self.released.append(delivery.message_id)
        destination = self.subscriptions[delivery.subscription][0]
        self.queues[destination].appendleft((message[0], message[1], dict(message[2], redelivered="true")))
        self._pump(destination)

    def disconnect(self) -> None:
        if self.connected:
            self.drop_connection("disconnect")

    # -- test controls -----------------------------------------------------------------
    def release_ack_receipts(self) -> None:
        held, self.held_ack_receipts = self.held_ack_receipts, []
        for receipt in held:
            self._sink(receipt)

    def refuse(self, destination: str, times: int, reason: str = "refused") -> None:
        """Refuse the next ``times`` sends with a receipt to ``destination`` (an ERROR frame)."""
        self._refusals[destination] = (times, reason)

    def attach(self, sink: Sink) -> None:
        """Hand the broker to a new client (an agent restarted on the same broker)."""
        if self.connected:
            self.drop_connection("client restarted")
        self._sink = sink

    def publish(self, destination: str, body: bytes, headers: Optional[Dict[str, str]] = None) -> str:
        """Put a message on a queue (as another client would) and deliver if possible."""
        message_id = "ID:memory-%d" % next(self._ids)
        self.queues[destination].append((message_id, body, self._stamped(headers)))
        if self.connected:
            self._pump(destination)
        return message_id

    def topic(self, destination: str, body: bytes, headers: Optional[Dict[str, str]] = None) -> None:
        """Deliver a topic message to every subscription on it."""
        for sub_id, (dest, _prefetch, _client) in list(self.subscriptions.items()):
            if dest == destination:
                self._deliver(sub_id, ("ID:memory-%d" % next(self._ids), body, self._stamped(headers)), client=False)

    def _stamped(self, headers: Optional[Dict[str, str]]) -> Dict[str, str]:
        stamped = dict(headers or {})
        if self.stamps_time:
            stamped.setdefault("timestamp", str(int(time.time() * 1000)))
        return stamped

    def drop_connection(self, reason: str = "dropped") -> None:
        """The connection dies: held messages go back to their queues, marked redelivered."""
        for sub_id in list(self.subscriptions):
            self._return_held(sub_id)
        acked, self._acked_here = self._acked_here, []
        for destination, (message_id, body, headers) in reversed(acked) if self.forget_acks_on_drop else []:
            self.queues[destination].appendleft((message_id, body, dict(headers, redelivered="true")))
        self.subscriptions.clear()
        self.connected = False
        self._sink(Disconnected(self.epoch, reason))

    def sent_to(self, destination: str) -> List[bytes]:
        return [body for dest, body, _headers in self.sent if dest == destination]

    # -- internals ----------------------------------------------------------------------
    def _check(self) -> None:
        if not self.connected:
            raise NotConnected("not connected")

    def _return_held(self, sub_id: str) -> None:
        held = self._held.pop(sub_id, {})
        destination = self.subscriptions.get(sub_id, ("",))[0]
        for message_id, body, headers in reversed(list(held.values())):
            headers = dict(headers, redelivered="true")
            self.queues[destination].appendleft((message_id, body, headers))

    def _pump(self, destination: str) -> None:
        queue = self.queues[destination]
        for sub_id, (dest, prefetch, client_ack) in list(self.subscriptions.items()):
            if dest != destination:
                continue
            while queue and sub_id in self.subscriptions and (
                    not client_ack or len(self._held[sub_id]) < prefetch):
                self._deliver(sub_id, queue.popleft(), client=client_ack)

    def _deliver(self, sub_id: str, message: _Message, client: bool) -> None:
        message_id, body, headers = message
        if client:
            self._held[sub_id][message_id] = message
        destination = self.subscriptions[sub_id][0]
        if self.bare_destinations and destination.startswith("/queue/"):
            destination = destination[len("/queue/"):]
        delivery_id = "%s/%d" % (message_id, next(self._ids)) if self.fresh_ids else message_id
        if client:
            del self._held[sub_id][message_id]
            self._held[sub_id][delivery_id] = (message_id, body, headers)
        self._sink(Delivery(destination, body, dict(headers, **{"message-id": delivery_id}),
                            sub_id, delivery_id, delivery_id, self.epoch, broker_time(self.kind, headers)))

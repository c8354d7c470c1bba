"""Input subscriptions that never hoard work.

ActiveMQ (a dropped subscription returns what it held): each subscription has prefetch 1,
so it holds at most one un-acked message.  While the agent has free slots, every input
queue has at least one idle subscription, and at most as many as there are free slots; a
subscription that receives a message stays busy until that message is acked.  With no
free slot, idle subscriptions are dropped, so a full agent holds only what it is running
and an idle agent elsewhere gets the rest of a burst.

RabbitMQ (a dropped subscription's un-acked messages stay on the channel until the
connection closes, and can then be neither acked nor NACKed): the same prefetch-1
subscriptions, but never dropped.  A new one opens only when every existing one holds a
run, so there are at most as many as the agent runs and lets wait (at most ``max_procs``
each); after a burst that made runs wait, up to ``max_procs`` runs may wait here for a
slot.  A run is given back by NACK, which requeues it, and whatever is still held when the
agent stops goes back when it disconnects.
"""

import itertools
import logging
from typing import Dict, Optional, Sequence, Set, Tuple

from postprocessing.errors import NotConnected
from postprocessing.transport import Delivery, Transport

logger = logging.getLogger(__name__)


class Subscriptions:
    def __init__(self, transport: Transport, queues: Sequence[str]) -> None:
        self._transport = transport
        self._queues = list(queues)
        self._ids = itertools.count(1)
        #: sub id -> (queue, ids of the messages it holds un-acked)
        self._subs: Dict[str, Tuple[str, Set[str]]] = {}

    @property
    def _dynamic(self) -> bool:
        """Whether subscriptions come and go with free slots (the connected broker's kind)."""
        return self._transport.returns_on_unsubscribe

    def reset(self) -> None:
        """The connection is gone, and every subscription with it."""
        self._subs.clear()

    def queue_of(self, sub_id: str) -> Optional[str]:
        """The queue an input subscription of this connection is on (None: not ours any more).

        Deliveries are routed by this, not by their ``destination`` header, which a broker
        may spell differently (Artemis drops the ``/queue/`` prefix)."""
        entry = self._subs.get(sub_id)
        return entry[0] if entry is not None else None

    def take(self, delivery: Delivery) -> bool:
        """Record a delivery on one of our subscriptions; False if it is not ours any more."""
        entry = self._subs.get(delivery.subscription)
        if entry is None:
            return False
        entry[1].add(delivery.message_id)
        return True

    def done(self, delivery: Delivery) -> None:
        """``delivery`` was acked: its subscription no longer holds it."""
        entry = self._subs.get(delivery.subscription)
        if entry is not None:
            entry[1].discard(delivery.message_id)

    def give_back(self, delivery: Delivery) -> None:
        """Return a held message to the broker (ActiveMQ: by dropping its subscription)."""
        entry = self._subs.get(delivery.subscription)
        if entry is None:
            return
        try:
            self._transport.release(delivery)
        except NotConnected:
            return
        entry[1].discard(delivery.message_id)
        if self._dynamic:
            del self._subs[delivery.subscription]
            self._unsubscribe(delivery.subscription)

    def reconcile(self, free: int, drop_idle: bool = False) -> None:
        """Fit the subscriptions to ``free`` slots.

        At least one idle subscription per queue while slots are free, at most ``free`` per
        queue, none when there are none (on RabbitMQ idle ones are kept regardless).  Idle
        subscriptions are kept, rather than dropped and re-opened, while they fit: that
        saves a SUBSCRIBE and an UNSUBSCRIBE per run.  ``drop_idle`` (a draining agent)
        drops idle ones on RabbitMQ too: a subscription holding nothing leaves nothing behind.
        """
        for queue in self._queues:
            idle = [s for s, (q, held) in self._subs.items() if q == queue and not held]
            for sub_id in idle[max(free, 0):] if self._dynamic or drop_idle else []:
                del self._subs[sub_id]
                self._unsubscribe(sub_id)
            if free > 0 and not idle:
                self._subscribe(queue)

    def _subscribe(self, queue: str) -> None:
        sub_id = "pp-%d" % next(self._ids)
        try:
            self._transport.subscribe(queue, sub_id, client_ack=True, prefetch=1)
        except NotConnected:
            return
        self._subs[sub_id] = (queue, set())

    def _unsubscribe(self, sub_id: str) -> None:
        try:
            self._transport.unsubscribe(sub_id)
        except NotConnected:
            logger.debug("unsubscribe %s: not connected", sub_id)

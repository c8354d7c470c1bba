"""The agent's ACKs of run messages: those on their way, and those a broker may have forgotten.

An ACK is sent with a receipt.  Until the receipt comes, the run stays "maybe not acked"
in the journal (and its done file stays on the shared filesystem), and a delivery with
the same identity on the live connection is a new request: the broker does not redeliver
a message whose ACK is in flight.

A broker that confirms ACKs before they are on disk (RabbitMQ) forgets those of the last
fraction of a second when it is SIGKILLed, and redelivers their messages marked
``redelivered`` after its restart.  The book remembers the ACKs confirmed in the last
``LOST_ACK_SEC`` and when each connection dropped, so that such a copy can be recognised
once (docs/delivery.md, "Limits, stated").
"""

import collections
import time
from typing import Dict, Optional, Set, Tuple

#: How long a confirmed ACK is remembered, and how young a connection is, for a lost ACK.
LOST_ACK_SEC = 60.0
#: How long before a connection drop a confirmed ACK may still be forgotten by a SIGKILLed broker
#: (RabbitMQ 3.10, measured: ACKs confirmed 0.15 s before the kill came back, 0.3 s before did not).
LOST_ACK_WINDOW = 1.0

#: The journal row of the run an ACK settles, its done file (lease path, nonce), its identity.
Acking = Tuple[int, Optional[Tuple[str, str]], str]


class AckBook:
    def __init__(self) -> None:
        #: ACK receipt id -> what it settles.
        self._in_flight: Dict[str, Acking] = {}
        #: Identity -> (connection epoch, when, when by the wall clock, its lease path or "") of ACKs
        #: the broker confirmed.
        self._confirmed: collections.OrderedDict[str, Tuple[int, float, float, str]] = collections.OrderedDict()
        #: Connection epoch -> when its drop was noticed (the last one only).
        self._dropped_at: Dict[int, float] = {}
        self._connected_at = 0.0
        #: When (wall clock) the last connection drop was noticed.
        self._dropped_wall: Optional[float] = None

    def sent(self, receipt: str, acking: Acking) -> None:
        self._in_flight[receipt] = acking

    def in_flight(self, ident: str) -> bool:
        """Whether an ACK of ``ident`` is on its way on the live connection."""
        return any(acking[2] == ident for acking in self._in_flight.values())

    def done_files_in_flight(self) -> Set[Tuple[str, str]]:
        """The done files of runs whose ACK is on its way (their messages are not being redelivered)."""
        return {acking[1] for acking in self._in_flight.values() if acking[1]}

    def receipt(self, receipt_id: str, epoch: int) -> Optional[Acking]:
        """An ACK's receipt: what it settled, or None if ``receipt_id`` is not an ACK's."""
        acking = self._in_flight.pop(receipt_id, None)
        if acking is not None:
            lease = acking[1][0] if acking[1] else ""
            self._confirmed[acking[2]] = (epoch, time.monotonic(), time.time(), lease)
        return acking

    def connected(self) -> None:
        self._connected_at = time.monotonic()

    def dropped(self, epoch: int) -> None:
        """The connection ``epoch`` dropped: ACKs in flight on it are lost (their runs stay "maybe not acked")."""
        self._dropped_at = {epoch: time.monotonic()}
        self._dropped_wall = time.time()
        self._in_flight.clear()

    def given_back(self, ident: str) -> None:
        """A delivery of ``ident`` went back to the broker: it returns redelivered, and is no lost ACK."""
        self._confirmed.pop(ident, None)

    def last_drop(self) -> Optional[float]:
        """While this connection is young: when (wall clock) the one before it dropped."""
        if self._dropped_wall is None or time.monotonic() - self._connected_at > LOST_ACK_SEC:
            return None
        return self._dropped_wall

    def lost_by_broker(self, ident: str, epoch: int) -> Optional[Tuple[str, float]]:
        """Whether a redelivered ``ident`` on connection ``epoch`` may be the copy of a run acked
        (receipt and all) on the connection before, within ``LOST_ACK_WINDOW`` of its drop, while
        this connection is young: then its lease path ("" if unclaimed) and when the ACK was
        confirmed (wall clock), for the caller to look for a claim made since.  A new request is
        not marked redelivered (unless delivered before); each ACK answers once."""
        now = time.monotonic()
        while self._confirmed and now - next(iter(self._confirmed.values()))[1] > LOST_ACK_SEC:
            self._confirmed.popitem(last=False)
        seen = self._confirmed.pop(ident, None)
        if seen is None or seen[0] == epoch or now - self._connected_at > LOST_ACK_SEC:
            return None
        dropped = self._dropped_at.get(seen[0])
        return (seen[3], seen[2]) if dropped is not None and dropped - seen[1] <= LOST_ACK_WINDOW else None

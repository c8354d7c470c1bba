"""Job slots: at most ``max_procs`` jobs, ``per_instrument`` per instrument, one per proposal."""

import collections
from typing import Dict, Optional, Set


class Slots:
    """Owned by the agent's loop; counts running jobs overall, per instrument and per proposal."""

    def __init__(self, max_procs: int, per_instrument: int, serialize_proposals: bool = False) -> None:
        self.max_procs = max_procs
        self.per_instrument = per_instrument
        self.serialize_proposals = serialize_proposals
        self.running = 0
        self._by_instrument: Dict[str, int] = collections.defaultdict(int)
        self._proposals: Set[str] = set()

    def can_start(self, instrument: Optional[str], proposal: Optional[str] = None) -> bool:
        if self.running >= self.max_procs:
            return False
        if self.serialize_proposals and proposal and proposal in self._proposals:
            return False
        if instrument and self.per_instrument:
            return self._by_instrument[instrument] < self.per_instrument
        return True

    def start(self, instrument: Optional[str], proposal: Optional[str] = None) -> None:
        if not self.can_start(instrument, proposal):
            raise RuntimeError("no free slot for %s" % instrument)
        self.running += 1
        if instrument:
            self._by_instrument[instrument] += 1
        if self.serialize_proposals and proposal:
            self._proposals.add(proposal)

    def finish(self, instrument: Optional[str], proposal: Optional[str] = None) -> None:
        self.running -= 1
        if instrument:
            self._by_instrument[instrument] -= 1
            if not self._by_instrument[instrument]:
                del self._by_instrument[instrument]
        self._proposals.discard(proposal or "")

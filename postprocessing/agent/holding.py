"""Holding and admission: which runs the agent keeps waiting, and how many more it takes.

Runs wait here only for a per-instrument slot, and at most ``max_procs`` of them.  When
every slot is busy, the node is overloaded or the agent is stopping, waiting runs go back
to the broker, where an idle agent can take them.  (On RabbitMQ they stay until they
have waited ``max_wait_hold_sec``, or, while every slot is busy, go back at once, or after
``FULL_HOLD_SEC`` when they came back; see subscriptions.py.)

An operator may drain the agent (it starts nothing more and gives back what waits, but
stays connected) or pause instruments (their runs are held un-acked, in state PAUSED,
and not started: the broker keeps them as un-acknowledged, and takes them back when the
agent goes; see agent/control.py and docs/operations.md).
"""

import logging
import time
from typing import Dict, List, Optional, Tuple

from postprocessing import logsafe
from postprocessing.agent.runs import Run, RunState, RunTable
from postprocessing.config import Config
from postprocessing.jobs.limits import Admission

logger = logging.getLogger(__name__)

#: On RabbitMQ a full agent keeps its subscriptions (subscriptions.py), so a run can reach it and
#: wait for one of its slots while another agent has a free one.  It is given back at once, and
#: the broker hands it to the next subscription with room, so it reaches a free slot in a few
#: hops.  A run that comes back to a subscription that gave it back within ``RETURN_MEMORY_SEC``
#: is given back after this long instead, so that runs do not circle between full agents.
FULL_HOLD_SEC = 2.0
RETURN_MEMORY_SEC = 30.0


class Holding:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.admission = Admission(config.admission_max_load_per_cpu, config.admission_min_free_mem_perc)
        #: When to look at the node's load again, while it is overloaded.
        self.next_admission: Optional[float] = None
        self._overload_reason: Optional[str] = None
        #: Set by ``postprocessing drain``: no run starts, waiting runs go back, nothing new is taken.
        self.draining = False
        #: Instruments paused by ``postprocessing pause`` -> since when (wall clock).
        self.paused: Dict[str, float] = {}
        #: (run identity, subscription) -> when a full agent gave that run back from that subscription.
        self._given_back: Dict[Tuple[str, str], float] = {}

    def hold_if_paused(self, run: Run) -> bool:
        """Whether ``run``'s instrument is paused; if so it is held, not started (state PAUSED)."""
        if run.instrument is None or run.instrument.upper() not in self.paused:
            return False
        if run.state is not RunState.PAUSED:
            logger.info("[%s] %s is paused: held un-acked, not started", run.label, logsafe.text(run.instrument))
        run.state = RunState.PAUSED
        return True

    def overloaded(self) -> bool:
        reason = self.admission.overloaded()
        if reason is None:
            self._overload_reason = None
            return False
        if reason != self._overload_reason:
            logger.info("node overloaded (%s): no job starts until it is not", reason)
        self._overload_reason = reason
        if self.next_admission is None:
            self.next_admission = time.monotonic() + self.config.admission_check_interval_sec
        return True

    def hold_limit(self, run: Run, full: bool) -> float:
        """How long ``run`` may wait here: ``max_wait_hold_sec``; when ``full`` (every slot busy on a
        broker that keeps a full agent's subscriptions, RabbitMQ) not at all, or ``FULL_HOLD_SEC``
        if its subscription gave it back lately."""
        if not full:
            return self.config.max_wait_hold_sec
        returned = (run.identity, run.delivery.subscription) in self._given_back
        return min(FULL_HOLD_SEC if returned else 0.0, self.config.max_wait_hold_sec)

    def given_back(self, run: Run, full: bool) -> None:
        """``run`` went back to the broker; from a ``full`` agent, remember from which subscription."""
        now = time.monotonic()
        for key, when in list(self._given_back.items()):
            if now - when > RETURN_MEMORY_SEC:
                del self._given_back[key]
        if full:
            self._given_back[(run.identity, run.delivery.subscription)] = now

    def deadline(self, runs: RunTable, full: bool = False) -> Optional[float]:
        """When the first waiting run has waited its limit."""
        ends = [r.waiting_since + self.hold_limit(r, full) for r in runs.in_state(RunState.WAITING)]
        return min(ends) if ends else None

    def overdue(self, runs: RunTable, now: float, full: bool = False) -> List[Run]:
        return [r for r in runs.in_state(RunState.WAITING) if now - r.waiting_since >= self.hold_limit(r, full)]

    def fit(self, runs: RunTable, running: int, stopping: bool, returns_on_unsubscribe: bool,
            rejoin_epoch: Optional[int]) -> Tuple[List[Run], int]:
        """The waiting runs to give back, and how many more runs to take (free subscriptions).

        Shortly after a reconnect (``rejoin_epoch``: the new connection), even a full agent
        takes as many as it runs whose messages went back to the broker with the lost
        connection: their redeliveries should come back here and rejoin their jobs, not go
        to an idle agent (which would hold them on their claim).  Not on a broker that keeps
        subscriptions (RabbitMQ): there each such subscription would stay open after the
        rejoin, and a full agent's open subscription pulls in runs it cannot start while
        another agent has free slots.  Those redeliveries are held on their claims elsewhere,
        or come back here once a slot frees, and are answered from the journal.
        """
        max_procs = self.config.max_procs
        emptying = stopping or self.draining
        blocked = emptying or running >= max_procs or self.overloaded()
        waiting = runs.in_state(RunState.WAITING)
        keep = 0 if blocked else max_procs
        let_go = waiting[keep:] if emptying or returns_on_unsubscribe else []
        if emptying:
            let_go += runs.in_state(RunState.HELD) + runs.in_state(RunState.PAUSED)
        finishing = sum(1 for r in runs.in_state(RunState.FINISHING) if r.ctx is not None)
        free = max_procs - max(running + finishing, len(waiting[:keep]))
        orphans = 0
        if rejoin_epoch is not None and returns_on_unsubscribe and not stopping:
            orphans = runs.orphans(rejoin_epoch)
        return let_go, max(0 if blocked else free, orphans)

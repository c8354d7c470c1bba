"""The run table: every message the agent holds un-acked, from delivery to settlement."""

import collections
import dataclasses
import enum
import time
from typing import Iterator, List, Optional, Tuple

from postprocessing.agent.claims import Claim, Watch
from postprocessing.processors.base import JobContext, Processor, Work
from postprocessing.transport import Delivery


class RunState(enum.Enum):
    #: Accepted, waiting for a slot (per instrument, per proposal, or admission).
    WAITING = "waiting"
    #: Another agent's claim on the shared filesystem says it runs this run: held un-acked.
    HELD = "held"
    #: Its job runs.
    RUNNING = "running"
    #: Its outcome is sent; the broker's receipt settles it.
    FINISHING = "finishing"
    #: Its instrument is paused (``postprocessing pause``): held un-acked, not started.
    PAUSED = "paused"


@dataclasses.dataclass
class Run:
    """A message this agent holds un-acked, from delivery to settlement."""

    key: str
    delivery: Delivery
    #: The queue it came from (by its subscription) and its body: see journal.identity.
    identity: str = ""
    #: Its row in the run journal.
    row: int = 0
    work: Optional[Work] = None
    processor: Optional[Processor] = None
    state: RunState = RunState.WAITING
    ctx: Optional[JobContext] = None
    started_at: float = 0.0
    #: Its lease, once claimed; or the lease of the agent that runs it (while HELD).
    claim: Optional[Claim] = None
    watch: Optional[Watch] = None
    #: Another agent took the claim over while the job ran: its outcome is not ours to send.
    claim_lost: bool = False
    #: A cancel handed to the claimant while HELD: if the claim dies instead, the run is answered cancelled.
    cancelled_by: Optional[str] = None
    #: The done file (lease path, nonce) that a confirmed ACK of this run's message clears.
    done_ref: Optional[Tuple[str, str]] = None
    waiting_since: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def instrument(self) -> Optional[str]:
        return self.work.instrument if self.work else None

    @property
    def proposal(self) -> Optional[str]:
        return self.work.proposal if self.work else None

    @property
    def label(self) -> str:
        return self.work.label if self.work else self.key


class RunTable:
    """The held runs, oldest first, by key."""

    def __init__(self) -> None:
        self._runs: collections.OrderedDict[str, Run] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[Run]:
        return iter(list(self._runs.values()))

    def get(self, key: str) -> Optional[Run]:
        return self._runs.get(key)

    def add(self, run: Run) -> None:
        self._runs[run.key] = run

    def pop(self, key: str) -> Optional[Run]:
        return self._runs.pop(key, None)

    def in_state(self, state: RunState) -> List[Run]:
        return [r for r in self._runs.values() if r.state is state]

    def count(self, state: RunState) -> int:
        return sum(1 for r in self._runs.values() if r.state is state)

    def dead_twin(self, ident: str, epoch: int) -> Optional[Run]:
        """The run a delivery of ``ident`` on connection ``epoch`` redelivers, if any.

        A run whose delivery died with an earlier connection, matched by queue and body:
        ActiveMQ keeps a message's id across redeliveries, RabbitMQ and Artemis do not, and
        ActiveMQ may mark a message delivered before its restart as not redelivered.
        """
        for run in self._runs.values():
            if run.identity == ident and run.delivery.epoch != epoch:
                return run
        return None

    def orphans(self, epoch: int) -> int:
        """Runs still working (or waiting for their outcome's receipt) whose delivery died."""
        return sum(1 for r in self._runs.values() if r.delivery.epoch != epoch and (
            r.state is RunState.RUNNING or (r.state is RunState.FINISHING and r.ctx is not None)))

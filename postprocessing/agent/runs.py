"""The run table: every message the agent holds un-acked, from delivery to settlement."""

import collections
import dataclasses
import enum
import hashlib
import time
from typing import Iterator, List, Optional

from postprocessing.processors.base import JobContext, Processor, Work
from postprocessing.transport import Delivery


def twin_key(d: Delivery) -> str:
    """Identifies a message by content, for brokers whose message ids change on redelivery."""
    return "%s:%s" % (d.destination, hashlib.sha256(d.body).hexdigest())


class RunState(enum.Enum):
    #: Accepted, waiting for a slot (per instrument, per proposal, or admission).
    WAITING = "waiting"
    #: Its job runs.
    RUNNING = "running"
    #: Its outcome is sent; the broker's receipt settles it.
    FINISHING = "finishing"


@dataclasses.dataclass
class Run:
    """A message this agent holds un-acked, from delivery to settlement."""

    key: str
    delivery: Delivery
    work: Optional[Work] = None
    processor: Optional[Processor] = None
    state: RunState = RunState.WAITING
    ctx: Optional[JobContext] = None
    started_at: float = 0.0
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

    def stale_twin(self, d: Delivery) -> Optional[Run]:
        """A run whose delivery died with an earlier connection and that ``d`` redelivers.

        ActiveMQ keeps a message's id across redeliveries; RabbitMQ gives each delivery a new
        one, so a redelivered message is matched by destination and body instead.
        """
        if not d.redelivered:
            return None
        for run in self._runs.values():
            old = run.delivery
            if old.epoch != d.epoch and old.destination == d.destination and old.body == d.body:
                return run
        return None

"""What the agent's loop handles besides transport events, and its record of each held run."""

import dataclasses
import hashlib
import threading
import time
from typing import Any, Mapping, Optional

from postprocessing.processors.base import JobContext, Outcome, Processor, Work
from postprocessing.transport import Delivery


def twin_key(d: Delivery) -> str:
    """Identifies a message by content, for brokers whose message ids change on redelivery."""
    return "%s:%s" % (d.destination, hashlib.sha256(d.body).hexdigest())


@dataclasses.dataclass(frozen=True)
class Publish:
    """A job asks the loop to send a message (for example STARTED); ``sent`` is set once queued."""

    destination: str
    body: Mapping[str, Any]
    sent: threading.Event


@dataclasses.dataclass(frozen=True)
class JobDone:
    key: str
    outcome: Outcome


@dataclasses.dataclass(frozen=True)
class Stop:
    reason: str


@dataclasses.dataclass
class Run:
    """A message this agent holds un-acked, from delivery to settlement."""

    key: str
    delivery: Delivery
    work: Optional[Work] = None
    processor: Optional[Processor] = None
    state: str = "waiting"  # waiting -> running -> finishing
    ctx: Optional[JobContext] = None
    started_at: float = 0.0
    waiting_since: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def instrument(self) -> Optional[str]:
        return self.work.instrument if self.work else None

    @property
    def proposal(self) -> Optional[str]:
        return self.work.proposal if self.work else None

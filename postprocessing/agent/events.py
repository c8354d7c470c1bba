"""What reaches the agent's loop besides transport events: job messages, job results, stops."""

import dataclasses
import threading
from typing import Any, Mapping

from postprocessing.processors.base import Outcome


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

"""Cancellation requests: who asked, for which run, and for how long they stand.

A cancel arrives on a queue (``reduction_cancel``), so only one agent receives it.  That
agent re-publishes it on a topic (``cancel_fanout``) before acking it, and every agent
(itself included) subscribes to the topic.  So a cancel reaches whichever agent holds the
run, and one for a run that has not arrived yet stands for ``cancel_window_sec``.  The
re-published cancel carries ``sent_ms``, when the broker took the cancel in: where the broker
stamps its messages (ActiveMQ Classic, Artemis), a standing cancel stops only a request
the broker took in before it, never a later one.
"""

import dataclasses
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from postprocessing.agent.runs import Run, RunState, RunTable
from postprocessing.errors import InvalidMessage
from postprocessing.messages import RunRequest, plain_name, run_number


@dataclasses.dataclass(frozen=True)
class CancelRequest:
    instrument: str
    run_number: str
    ipts: Optional[str]
    who: str
    #: When the broker took the cancel in (ms since the epoch), where it said.
    sent_ms: Optional[int] = None

    def matches(self, request: RunRequest) -> bool:
        return (request.instrument == self.instrument and request.run_number == self.run_number
                and (self.ipts is None or request.ipts == self.ipts))

    def sent_before(self, request_ms: Optional[int]) -> bool:
        """False only for a request that the broker took in after this cancel (both stamped)."""
        return self.sent_ms is None or request_ms is None or request_ms <= self.sent_ms


def parse_cancel(data: Mapping[str, Any]) -> CancelRequest:
    if data.get("cancel") is not True:
        raise InvalidMessage("Cancel request must have \"cancel\": true")
    ipts = plain_name(data, "ipts", "IPTS") if data.get("ipts") is not None else None
    who = data.get("information")
    sent_ms = data.get("sent_ms")
    if not isinstance(sent_ms, int) or isinstance(sent_ms, bool) or sent_ms <= 0:
        sent_ms = None
    return CancelRequest(plain_name(data, "instrument", "Instrument"), run_number(data), ipts,
                         who if isinstance(who, str) and who else "unknown", sent_ms)


def run_ref(request: Union[RunRequest, CancelRequest]) -> str:
    """What a cancel names: the instrument and the run number."""
    return "%s/%s" % (request.instrument, request.run_number)


def closed_notice(cancel: CancelRequest, hostname: str) -> Dict[str, Any]:
    """Published on the fan-out topic once a cancel met its run: it stands nowhere any more."""
    body: Dict[str, Any] = {"cancel": "closed", "instrument": cancel.instrument,
                            "run_number": cancel.run_number, "information": hostname}
    if cancel.ipts is not None:
        body["ipts"] = cancel.ipts
    return body


class CancelBook:
    """Cancels that have not met their run yet, until their window closes."""

    def __init__(self, window_sec: float) -> None:
        self.window = window_sec
        self._pending: Dict[Tuple[str, str], Tuple[CancelRequest, float]] = {}
        #: When (wall clock) each standing cancel arrived here.
        self._since: Dict[Tuple[str, str], float] = {}

    def add(self, cancel: CancelRequest) -> None:
        self._pending[(cancel.instrument, cancel.run_number)] = (cancel, time.monotonic() + self.window)
        self._since[(cancel.instrument, cancel.run_number)] = time.time()

    def discard(self, cancel: CancelRequest) -> None:
        self._pending.pop((cancel.instrument, cancel.run_number), None)
        self._since.pop((cancel.instrument, cancel.run_number), None)

    def standing(self, request: RunRequest) -> Optional[CancelRequest]:
        """The standing cancel that names ``request``, if any."""
        now = time.monotonic()
        for key, (_cancel, expires) in list(self._pending.items()):
            if expires < now:
                del self._pending[key]
                self._since.pop(key, None)
        entry = self._pending.get((request.instrument, request.run_number))
        return entry[0] if entry is not None and entry[0].matches(request) else None

    def take(self, request: RunRequest) -> Optional[Tuple[CancelRequest, float]]:
        """The standing cancel for ``request`` and when it arrived (wall clock), removed from the book."""
        cancel = self.standing(request)
        if cancel is None:
            return None
        key = (request.instrument, request.run_number)
        del self._pending[key]
        return cancel, self._since.pop(key, time.time())


def cancel_targets(cancel: CancelRequest, runs: RunTable) -> List[Run]:
    """The runs ``cancel`` stops: cancellable ones, waiting or running, that it names."""
    return [run for run in runs
            if run.work is not None and run.processor is not None and run.processor.cancellable
            and run.state in (RunState.WAITING, RunState.RUNNING) and cancel.matches(run.work.payload)]

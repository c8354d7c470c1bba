"""The agent's fleet status: what it runs, holds and did last, on the ``fleet_status`` topic.

A status message goes out when the agent connects, whenever its running set, draining or
paused state changes (at most one per ``CHANGE_INTERVAL_SEC``: a burst of short runs sends
one status at its start and one with its end state, not two per run), on request (a
``status`` command on the control topic), and with every heartbeat
(``heartbeat_interval_sec``).  ``postprocessing fleet`` reads them.  The SNS heartbeat stays
as it is: the web monitor reads that one.

The body is JSON (see :func:`StatusBoard.body` and docs/operations.md)::

    {"kind": "postprocessing-status", "host": ..., "pid": ..., "version": ..., "uptime_sec": ...,
     "heartbeat_interval_sec": ..., "state": "running" | "draining" | "stopping" | "stopped",
     "slots": {"used": ..., "total": ...}, "paused_instruments": {"CNCS": since, ...},
     "held_paused": ..., "waiting": ..., "running": [...], "outcomes": [...], "sent_at": ...}
"""

import collections
import logging
import time
from typing import Any, Deque, Dict, List, Optional, Tuple

import psutil

from postprocessing import __version__, messages
from postprocessing.agent.holding import Holding
from postprocessing.agent.runs import Run, RunState, RunTable
from postprocessing.config import Config
from postprocessing.errors import NotConnected
from postprocessing.jobs.limits import tree_rss
from postprocessing.transport import Transport

logger = logging.getLogger(__name__)

KIND = "postprocessing-status"
#: How many outcomes a status lists, newest last.
OUTCOMES_KEPT = 10
#: The longest error line a status carries.
_ERROR_CHARS = 300
#: The least time between two statuses that a change (not a request or heartbeat) sends.
CHANGE_INTERVAL_SEC = 1.0


def error_line(body: Any) -> Optional[str]:
    """The first line of an outcome's ``error``, shortened; None when it has none."""
    error = body.get("error") if isinstance(body, dict) else None
    if not error:
        return None
    line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return line[:_ERROR_CHARS]


def run_fields(run: Run) -> Dict[str, Any]:
    """Instrument, run number, IPTS and processor of a run, as far as its message tells."""
    fields = run.work.fields if run.work is not None else {}
    return {
        "instrument": run.instrument,
        "run_number": _plain(fields.get("run_number")),
        "ipts": _plain(fields.get("ipts")),
        "processor": run.processor.name if run.processor is not None else None,
    }


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def _rss(run: Run) -> Optional[int]:
    """Resident memory of the run's subprocesses and their children, in bytes (None: none runs)."""
    if run.ctx is None:
        return None
    pids = run.ctx.pids()
    if not pids:
        return None
    total = 0
    for pid in pids:
        try:
            total += tree_rss(psutil.Process(pid))
        except psutil.Error:
            continue
    return total


class StatusBoard:
    def __init__(self, config: Config, hostname: str, pid: int, transport: Transport) -> None:
        self.config = config
        self.hostname = hostname
        self.pid = pid
        self.transport = transport
        self.started = time.time()
        self._started_mono = time.monotonic()
        self.outcomes: Deque[Dict[str, Any]] = collections.deque(maxlen=OUTCOMES_KEPT)
        self._signature: Optional[Tuple[Any, ...]] = None
        self._last_sent: Optional[float] = None
        #: When a change held back by ``CHANGE_INTERVAL_SEC`` is to go out (the loop's timer).
        self.due: Optional[float] = None
        self.sent = 0
        self.outcomes_seen = 0

    def outcome(self, run: Run, destination: str, body: Any, seconds: float) -> None:
        """Remember a job's outcome for the next statuses."""
        entry = run_fields(run)
        entry.update({"destination": destination, "duration_sec": round(seconds, 3),
                      "error": error_line(body), "at": round(time.time(), 3)})
        self.outcomes.append(entry)
        self.outcomes_seen += 1

    def signature(self, runs: RunTable, holding: Holding, stopping: bool) -> Tuple[Any, ...]:
        """What, when it changes, makes a status go out."""
        return (tuple(sorted(r.key for r in runs.in_state(RunState.RUNNING))), holding.draining,
                tuple(sorted(holding.paused)), stopping, runs.count(RunState.PAUSED), self.outcomes_seen)

    def state(self, holding: Holding, stopping: bool, stopped: bool = False) -> str:
        if stopped:
            return "stopped"
        if stopping:
            return "stopping"
        return "draining" if holding.draining else "running"

    def body(self, runs: RunTable, holding: Holding, used: int, stopping: bool,
             stopped: bool = False) -> Dict[str, Any]:
        now = time.monotonic()
        running: List[Dict[str, Any]] = []
        for run in runs.in_state(RunState.RUNNING):
            entry = run_fields(run)
            entry["elapsed_sec"] = round(now - run.started_at, 1)
            entry["rss_bytes"] = _rss(run)
            running.append(entry)
        return {
            "kind": KIND,
            "host": self.hostname,
            "pid": self.pid,
            "version": __version__,
            "started": round(self.started, 3),
            "uptime_sec": round(now - self._started_mono, 1),
            "heartbeat_interval_sec": self.config.heartbeat_interval_sec,
            "state": self.state(holding, stopping, stopped),
            "draining": holding.draining,
            "stopping": stopping or stopped,
            "slots": {"used": used, "total": self.config.max_procs},
            "paused_instruments": {inst: round(since, 3) for inst, since in sorted(holding.paused.items())},
            "held_paused": runs.count(RunState.PAUSED),
            "waiting": runs.count(RunState.WAITING),
            "running": running,
            "outcomes": list(self.outcomes),
            "sent_at": round(time.time(), 3),
        }

    def publish(self, runs: RunTable, holding: Holding, used: int, stopping: bool, force: bool = False,
                stopped: bool = False) -> bool:
        """Send a status if ``force``, or if something in it changed since the last and the last is
        ``CHANGE_INTERVAL_SEC`` old (else ``due`` says when it will be); True if sent."""
        signature = self.signature(runs, holding, stopping)
        if not force:
            if signature == self._signature:
                self.due = None
                return False
            now = time.monotonic()
            if self._last_sent is not None and now < self._last_sent + CHANGE_INTERVAL_SEC:
                self.due = self._last_sent + CHANGE_INTERVAL_SEC
                return False
        body = self.body(runs, holding, used, stopping, stopped)
        try:
            self.transport.send(self.config.fleet_status, messages.encode(body), headers={"persistent": "false"})
        except NotConnected:
            self.due = None  # the next connection sends one
            return False
        self._signature = signature
        self._last_sent = time.monotonic()
        self.due = None
        self.sent += 1
        return True

"""The soak: many no-op runs through one agent; runs lost, duplicates, RSS and open files.

Shared by ``tests/test_fire_soak.py`` (short by default) and ``bench/soak.py`` (full size).
"""

import collections
import dataclasses
import time
from typing import Counter, Dict, Tuple

import psutil

from tests.support.agentproc import AgentProcess
from tests.support.client import Collector
from tests.support.facility import Facility

INST = "SOAK"
IPTS = "IPTS-1"
NOOP = "pass\n"
MB = 1024.0 * 1024.0
#: How long the daemon may go without finishing a run before the rest count as lost.
STALL_SEC = 60.0
#: Idle time before each measurement, for job threads and their pipes to be gone.
SETTLE_SEC = 1.0


@dataclasses.dataclass(frozen=True)
class SoakFigures:
    runs: int
    warmup: int
    lost: int
    duplicate_complete: int
    duplicate_started: int
    errors: int
    rss_start_mb: float
    rss_end_mb: float
    fds_start: int
    fds_end: int
    seconds: float

    @property
    def rss_growth_mb(self) -> float:
        return self.rss_end_mb - self.rss_start_mb

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return ("%d runs in %.1f s (%.1f runs/s): %d lost, %d duplicate COMPLETEs, %d duplicate STARTEDs, %d errors; "
                "RSS %.1f -> %.1f MB (%+.1f MB); open fds %d -> %d" % (
                    self.runs, self.seconds, self.runs_per_s, self.lost, self.duplicate_complete,
                    self.duplicate_started, self.errors, self.rss_start_mb, self.rss_end_mb, self.rss_growth_mb,
                    self.fds_start, self.fds_end))


def measure(pid: int) -> Tuple[float, int]:
    """The daemon's resident memory (MB) and open file descriptors, after an idle moment."""
    time.sleep(SETTLE_SEC)
    proc = psutil.Process(pid)
    return proc.memory_info().rss / MB, proc.num_fds()


def completed(client: Collector, agent: AgentProcess, key: str, numbers: range) -> Counter[str]:
    wanted = {str(n) for n in numbers}
    return collections.Counter(m["run_number"] for m in client.get(agent.q(key)) if m.get("run_number") in wanted)


def wait_for(client: Collector, agent: AgentProcess, numbers: range) -> None:
    """Until every run of ``numbers`` completed, or nothing completed for STALL_SEC, or the daemon died."""
    last, progress_at = -1, time.monotonic()
    while True:
        done = len(completed(client, agent, "reduction_complete", numbers))
        if done == len(numbers) or agent.proc is None or agent.proc.poll() is not None:
            return
        if done != last:
            last, progress_at = done, time.monotonic()
        elif time.monotonic() - progress_at > STALL_SEC:
            return
        time.sleep(0.1)


def soak(client: Collector, agent: AgentProcess, facility: Facility, runs: int, warmup: int = 20) -> SoakFigures:
    """Send ``warmup`` runs, measure, send ``runs`` more, measure again; ``agent`` is started, on INST."""
    facility.script(INST, NOOP)
    bodies: Dict[int, Dict[str, str]] = {n: facility.run(INST, IPTS, n) for n in range(1, warmup + runs + 1)}
    queue = agent.q("reduction_data_ready")
    first = range(1, warmup + 1)
    for n in first:
        client.send(queue, bodies[n])
    wait_for(client, agent, first)
    assert len(completed(client, agent, "reduction_complete", first)) == warmup, "the warm-up runs did not complete"
    rss_start, fds_start = measure(agent.pid)

    soaked = range(warmup + 1, warmup + runs + 1)
    t0 = time.monotonic()
    for n in soaked:
        client.send(queue, bodies[n])
    wait_for(client, agent, soaked)
    seconds = time.monotonic() - t0
    assert agent.proc is not None and agent.proc.poll() is None, "the daemon died:\n" + agent.tail()
    rss_end, fds_end = measure(agent.pid)

    everything = range(1, warmup + runs + 1)
    complete = completed(client, agent, "reduction_complete", everything)
    started = completed(client, agent, "reduction_started", everything)
    errors = sum(len(client.get(agent.q(k))) for k in ("reduction_error", "postprocess_error"))
    return SoakFigures(
        runs=runs, warmup=warmup, lost=len(soaked) - len(completed(client, agent, "reduction_complete", soaked)),
        duplicate_complete=sum(n - 1 for n in complete.values()),
        duplicate_started=sum(n - 1 for n in started.values()), errors=errors,
        rss_start_mb=rss_start, rss_end_mb=rss_end, fds_start=fds_start, fds_end=fds_end, seconds=seconds)

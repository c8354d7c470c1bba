"""Resource limits, each a small object: memory per job tree, wall time, node admission."""

import os
import time
from typing import Callable, Optional

import psutil

MB = 1024.0 * 1024.0
GB = 1024.0 * MB


def tree_rss(leader: psutil.Process) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    total = 0
    try:
        procs = [leader] + leader.children(recursive=True)
    except psutil.Error:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


class MemoryLimit:
    """A job's whole process tree may not exceed a share of the machine's RAM."""

    def __init__(self, percent: float, total_bytes: Optional[int] = None) -> None:
        self.percent = percent
        total = total_bytes if total_bytes is not None else psutil.virtual_memory().total
        self.max_bytes = int(total * percent / 100.0)

    def check(self, leader: psutil.Process) -> Optional[str]:
        used = tree_rss(leader)
        if used <= self.max_bytes:
            return None
        return ("Total memory usage exceeded limit (%f GiB > %f GiB). Terminating job. "
                "(limit: %g%% of RAM)" % (used / GB, self.max_bytes / GB, self.percent))


class TimeLimit:
    """A job may run for at most ``minutes``."""

    def __init__(self, minutes: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.minutes = minutes
        self._clock = clock
        self.deadline = clock() + minutes * 60.0

    def remaining(self) -> float:
        return max(0.0, self.deadline - self._clock())

    def check(self) -> Optional[str]:
        if self.remaining() > 0:
            return None
        return "Time limit exceeded: ran longer than %g minutes" % self.minutes


class Admission:
    """No new job starts while the node is overloaded (a threshold of 0 is off)."""

    def __init__(self, max_load_per_cpu: float, min_free_mem_perc: float) -> None:
        self.max_load_per_cpu = max_load_per_cpu
        self.min_free_mem_perc = min_free_mem_perc
        self._cpus = os.cpu_count() or 1

    def overloaded(self) -> Optional[str]:
        """Why the node is overloaded now, or None when a job may start."""
        if self.max_load_per_cpu:
            load = os.getloadavg()[0] / self._cpus
            if load > self.max_load_per_cpu:
                return "load %.2f per CPU above %g" % (load, self.max_load_per_cpu)
        if self.min_free_mem_perc:
            free = 100.0 - psutil.virtual_memory().percent
            if free < self.min_free_mem_perc:
                return "free memory %.1f%% below %g%%" % (free, self.min_free_mem_perc)
        return None

"""One job subprocess: its own process group, watched against limits, killed as a group.

The watcher blocks on the process (a pidfd) and a wake-up pipe, waking early only to
sample memory; it never sleeps to poll for exit.  A kill sends SIGTERM to the group,
waits ``grace`` seconds for the leader, then SIGKILLs the group and any descendant that
left it.  The child gets PR_SET_PDEATHSIG so it dies with the daemon.
"""

import ctypes
import dataclasses
import functools
import logging
import os
import select
import signal
import subprocess
from typing import IO, Callable, List, Mapping, Optional, Sequence

import psutil

from postprocessing.errors import JobFailed
from postprocessing.jobs.limits import MemoryLimit, TimeLimit

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


@functools.lru_cache(maxsize=1)
def _prctl() -> Optional[Callable[..., int]]:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def _child_setup(nice: int) -> Callable[[], None]:
    """``nice`` is the job's nice level, not an increment over the agent's."""
    prctl = _prctl()

    def setup() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        increment = nice - os.nice(0)
        if increment > 0:
            os.nice(increment)

    return setup


@dataclasses.dataclass(frozen=True)
class ProcessResult:
    returncode: int
    kill_reason: Optional[str] = None

    @property
    def describe(self) -> str:
        """The exit status in words."""
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = str(-self.returncode)
            return "killed by signal %s" % name
        return "exit status %d" % self.returncode


class JobProcess:
    """A subprocess started in a new session, so its pid is its process group id."""

    def __init__(self, argv: Sequence[str], cwd: str, stdout: IO[bytes], stderr: IO[bytes],
                 env: Mapping[str, str], nice: int = 0) -> None:
        self._kill_reason: Optional[str] = None
        try:
            self.proc = subprocess.Popen(
                list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                env=dict(env), start_new_session=True, close_fds=True, preexec_fn=_child_setup(nice),
            )
        except OSError as err:
            raise JobFailed("cannot start %s: %s" % (argv[0] if argv else "an empty command",
                                                     err.strerror or err)) from None
        self._wake_r, self._wake_w = os.pipe()
        self.pid = self.proc.pid

    def request_kill(self, reason: str) -> None:
        """Ask the watcher (from any thread) to kill the job's group with ``reason``."""
        if self._kill_reason is None:
            self._kill_reason = reason
        try:
            os.write(self._wake_w, b"k")
        except OSError:
            pass

    def wait(self, time_limit: TimeLimit, memory: Optional[MemoryLimit], interval: float,
             grace: float) -> ProcessResult:
        """Wait for the job, enforcing the limits; always reaps and cleans up the group."""
        try:
            leader: Optional[psutil.Process] = psutil.Process(self.pid)
        except psutil.Error:
            leader = None
        pidfd = _pidfd_open(self.pid)
        try:
            while True:
                timeout = min(interval, time_limit.remaining()) if memory else time_limit.remaining()
                if self._wait_ready(pidfd, timeout):
                    if self._kill_reason is None:
                        break
                reason = self._kill_reason or time_limit.check()
                if reason is None and memory is not None and leader is not None:
                    reason = memory.check(leader)
                if reason is not None:
                    self._kill_reason = reason
                    self.kill_group(grace, pidfd)
                    break
            returncode = self.proc.wait()
        finally:
            self._cleanup_group()
            if pidfd is not None:
                os.close(pidfd)
            os.close(self._wake_r)
            os.close(self._wake_w)
        return ProcessResult(returncode, self._kill_reason)

    def _wait_ready(self, pidfd: Optional[int], timeout: float) -> bool:
        """Block until the process exits, a kill is requested, or ``timeout`` passes."""
        if pidfd is None:
            try:
                self.proc.wait(timeout=timeout)
                return True
            except subprocess.TimeoutExpired:
                return self._kill_reason is not None
        ready, _, _ = select.select([pidfd, self._wake_r], [], [], timeout)
        if self._wake_r in ready:
            os.read(self._wake_r, 64)
        return bool(ready)

    def kill_group(self, grace: float, pidfd: Optional[int] = None) -> None:
        """SIGTERM the group, wait up to ``grace`` s for the leader, then SIGKILL all."""
        escaped = self._descendants()
        _signal_group(self.pid, signal.SIGTERM)
        if pidfd is not None:
            select.select([pidfd], [], [], grace)
        else:
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.pid, signal.SIGKILL)
        for proc in escaped:
            try:
                proc.kill()
            except psutil.Error:
                continue

    def _descendants(self) -> List[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []

    def _cleanup_group(self) -> None:
        """Kill whatever the job left running in its group once the leader is gone."""
        if self.proc.poll() is None:
            _signal_group(self.pid, signal.SIGKILL)
            self.proc.wait()
        if _signal_group(self.pid, signal.SIGKILL):
            logger.info("killed processes left behind in job group %d", self.pid)


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _pidfd_open(pid: int) -> Optional[int]:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return int(opener(pid))
    except OSError:
        return None

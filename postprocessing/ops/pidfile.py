"""The daemon's pidfile, and whether a pid is the agent: what ``postprocessing start|stop|status`` check.

Beside the pidfile, ``<pid_file>.id`` holds the daemon's ``pid:boot-id:start-ticks``
(:mod:`postprocessing.jobs.identity`), so a pid reused since the daemon died is not taken
for the agent.
"""

import logging
import os
import signal
import time
from typing import Optional, Tuple

import psutil

from postprocessing.errors import ConfigError, PostProcessingError
from postprocessing.jobs import identity

logger = logging.getLogger(__name__)

RUNNING, DEAD, ABSENT = "running", "dead", "absent"


def read_pid(path: str) -> Tuple[bool, Optional[int]]:
    """Whether the pidfile exists, and the pid in it (None when it holds none)."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read(64).strip()
    except FileNotFoundError:
        return False, None
    except OSError as err:
        raise ConfigError("pid_file", "cannot read %s: %s" % (path, err.strerror)) from None
    return True, int(text) if text.isdigit() and int(text) > 0 else None


def identity_path(pid_file: str) -> str:
    """Beside the pidfile, the daemon's ``pid:boot-id:start-ticks`` (jobs/identity.py)."""
    return pid_file + ".id"


def is_agent(pid: int, id_file: Optional[str] = None) -> bool:
    """Whether ``pid`` is a live postprocessing process (not a zombie, not a reused pid).

    The identity the daemon wrote in ``id_file`` decides when it names ``pid``: a pid
    reused since, even by a process with the same command line, is not the agent."""
    if id_file is not None:
        try:
            with open(id_file, encoding="ascii", errors="replace") as handle:
                text = handle.read(200).strip()
        except OSError:
            text = ""
        if text.split(":", 1)[0] == str(pid):
            verdict = identity.alive(text)
            if verdict is not None:
                return verdict
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return any(os.path.basename(part) == "postprocessing" for part in proc.cmdline()[:4])
    except psutil.AccessDenied:
        return True
    except psutil.Error:
        return False


def probe(path: str) -> Tuple[str, Optional[int]]:
    """(RUNNING|DEAD|ABSENT, pid) from the pidfile."""
    exists, pid = read_pid(path)
    if not exists:
        return ABSENT, None
    if pid is not None and is_agent(pid, identity_path(path)):
        return RUNNING, pid
    return DEAD, pid


def remove_stale(path: str) -> bool:
    """Remove a dead daemon's pidfile and identity file; False when there was no pidfile."""
    try:
        os.unlink(identity_path(path))
    except OSError:
        pass
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise PostProcessingError("cannot remove stale pidfile %s: %s" % (path, err.strerror)) from None
    logger.info("removed stale pidfile %s", path)
    return True


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def send_term(pid: int) -> bool:
    """SIGTERM ``pid``; False when it is already gone, PostProcessingError when not allowed."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        raise PostProcessingError("not allowed to signal pid %d; run this as the agent's user" % pid) from None
    return True


def wait_gone(pid: int, timeout: float) -> None:
    """Wait for ``pid`` to exit; raises PostProcessingError if it still runs after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            raise PostProcessingError("pid %d still runs after %.0f s (it finishes its jobs first); "
                                      "run stop again to keep waiting" % (pid, timeout))
        time.sleep(0.1)

"""Kill job process groups whose agent is gone.

A job's direct child dies with its agent (PR_SET_PDEATHSIG), but processes it started
may not; under systemd ``KillMode=control-group`` removes them, and elsewhere the next
agent start calls :func:`reap_orphans`.
"""

import logging
import os
import signal
from typing import List

import psutil

from postprocessing.jobs import identity
from postprocessing.jobs.environment import MARKER

logger = logging.getLogger(__name__)


def _agent_alive(marker: str) -> bool:
    """Whether the agent a job's marker names runs; a marker of another format is left alone."""
    return identity.alive(marker) is not False


def reap_orphans() -> List[int]:
    """Kill processes of jobs whose agent is dead; returns the pids killed."""
    killed = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            marker = proc.environ().get(MARKER)
        except psutil.Error:
            continue
        if not marker or _agent_alive(marker):
            continue
        try:
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.kill()
        except psutil.Error:
            continue
        killed.append(proc.pid)
    if killed:
        logger.warning("killed %d processes of jobs whose agent died: %s", len(killed), killed)
    return killed

"""The sanitised environment jobs run with, and the marker that ties a job to its agent.

Jobs see only the variables listed in ``job_env_passthrough``: never the agent's
credentials or config path.  ``POSTPROCESSING_AGENT_ID`` names the agent process
(``pid:boot-id:start-ticks``, see identity.py) so that a restarted agent can find and
kill jobs whose agent died.  (Earlier versions set ``POSTPROCESSING_AGENT`` to
``pid:start-time`` and judge it by the wall clock; the new name keeps their reapers off
the jobs of this version while both run on a node.)
"""

import os
from typing import Dict, Mapping, Optional, Sequence

from postprocessing.jobs import identity

MARKER = "POSTPROCESSING_AGENT_ID"


def agent_identity(pid: int) -> str:
    """``pid:boot-id:start-ticks`` of a live process, stable for its lifetime and clock steps."""
    return identity.identity(pid)


def job_environment(passthrough: Sequence[str], identity: str, scriptlib: Optional[str] = None,
                    environ: Mapping[str, str] = os.environ) -> Dict[str, str]:
    """The variables a job gets; ``scriptlib`` (holding ``postprocessing.script``) goes first on PYTHONPATH."""
    env = {key: environ[key] for key in passthrough if key in environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    if scriptlib:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (scriptlib, env.get("PYTHONPATH")) if p)
    env[MARKER] = identity
    return env

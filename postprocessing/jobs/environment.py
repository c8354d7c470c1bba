"""The sanitised environment jobs run with, and the marker that ties a job to its agent.

Jobs see only the variables listed in ``job_env_passthrough``: never the agent's
credentials or config path.  ``POSTPROCESSING_AGENT`` names the agent process
(``pid:start-time``) so that a restarted agent can find and kill jobs whose agent died.
"""

import os
from typing import Dict, Mapping, Optional, Sequence

import psutil

MARKER = "POSTPROCESSING_AGENT"


def agent_identity(pid: int) -> str:
    """``pid:start-time`` of a live process, stable for its lifetime."""
    return "%d:%.2f" % (pid, psutil.Process(pid).create_time())


def job_environment(passthrough: Sequence[str], identity: str, scriptlib: Optional[str] = None,
                    environ: Mapping[str, str] = os.environ) -> Dict[str, str]:
    """The variables a job gets; ``scriptlib`` (holding ``postprocessing.script``) goes first on PYTHONPATH."""
    env = {key: environ[key] for key in passthrough if key in environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    if scriptlib:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (scriptlib, env.get("PYTHONPATH")) if p)
    env[MARKER] = identity
    return env

"""Run the ``postprocessing`` command line as a subprocess, the way an operator does."""

import json
import os
import subprocess
import sys
import warnings
from typing import Any, Dict, Optional, Sequence

import pytest

from tests.support.agentproc import ROOT


def write_config(path: str, config: Dict[str, Any]) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=1)
    return path


def broker_config(broker: Any, **extra: Any) -> Dict[str, Any]:
    """Config entries for the test broker (ActiveMQ or RabbitMQ), plus ``extra``."""
    cfg: Dict[str, Any] = {"brokers": [["127.0.0.1", broker.port]], "amq_user": broker.user,
                           "amq_pwd": broker.password, "broker_type": getattr(broker, "kind", "activemq")}
    cfg.update(extra)
    return cfg


def run_cli(config_path: Optional[str], *args: str, stdin: Optional[str] = None, timeout: float = 120.0,
            env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None) -> "subprocess.CompletedProcess[str]":
    """``python -m postprocessing [--config FILE] ARGS``; returns the finished process."""
    argv = [sys.executable, "-m", "postprocessing"]
    if config_path:
        argv += ["--config", config_path]
    full_env = dict(os.environ, PYTHONPATH=ROOT)
    full_env.pop("POSTPROCESSING_CONFIG", None)
    full_env.update(env or {})
    return subprocess.run(argv + list(args), input=stdin if stdin is not None else "", capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=cwd or ROOT)


def assert_no_traceback(proc: "subprocess.CompletedProcess[str]") -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout


def service_unavailable(what: str, reason: str) -> None:
    """Fail under CI, skip loudly elsewhere."""
    if os.environ.get("CI"):
        pytest.fail("CI is set and %s is not available: %s" % (what, reason), pytrace=False)
    warnings.warn("SKIPPING %s tests: %s" % (what, reason), stacklevel=2)
    pytest.skip("NO %s: %s (scripts/install-deps.sh installs it; under CI=true this fails)" % (what, reason))


def require_tools(what: str, tools: Sequence[str]) -> None:
    import shutil

    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        service_unavailable(what, "%s not found" % ", ".join(missing))

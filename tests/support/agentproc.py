"""Run the real agent (``python -m postprocessing run``) as a subprocess with its own config."""

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import psutil

from tests.support import ashost

DESTINATION_KEYS = (
    "postprocess_error", "reduction_data_ready", "reduction_himem_data_ready", "reduction_started",
    "reduction_complete", "reduction_error", "reduction_disabled",
    "catalog_data_ready", "catalog_started", "catalog_complete", "catalog_error",
    "reduction_catalog_data_ready", "reduction_catalog_started", "reduction_catalog_complete",
    "reduction_catalog_error", "create_reduction_script", "reduction_not_needed", "reduction_cancel",
)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def queue_names(prefix: str) -> Dict[str, str]:
    """Config entries giving every queue and topic a test-private name."""
    names: Dict[str, Any] = {key: "%s.%s" % (prefix, key.upper()) for key in DESTINATION_KEYS}
    names["heart_beat"] = "/topic/%s.HEARTBEAT" % prefix
    names["heartbeat_ping"] = "/topic/%s.PING" % prefix
    names["service_status"] = "/topic/%s.${instrument}.STATUS.POSTPROCESS" % prefix
    names["cancel_fanout"] = "/topic/%s.CANCEL_FANOUT" % prefix
    names["fleet_status"] = "/topic/%s.FLEET_STATUS" % prefix
    names["fleet_control"] = "/topic/%s.FLEET_CONTROL" % prefix
    return names


class AgentProcess:
    def __init__(self, workdir: str, config: Dict[str, Any], name: str = "agent", host: Optional[str] = None) -> None:
        """``host``: the host name the agent runs under (tests.support.ashost), else this machine's."""
        self.workdir = workdir
        self.prefix = ashost.prefix(host) if host else []
        self.config = dict(config)
        self.config.setdefault("log_file", os.path.join(workdir, "%s.log" % name))
        self.config.setdefault("journal_path", os.path.join(workdir, "%s.journal" % name))
        self.config_path = os.path.join(workdir, "%s.conf" % name)
        self.stderr_path = os.path.join(workdir, "%s.stderr" % name)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.write_config()

    def write_config(self) -> None:
        with open(self.config_path, "w", encoding="utf-8") as handle:
            json.dump(self.config, handle, indent=1)

    def q(self, key: str) -> str:
        """The STOMP destination the agent uses for config key ``key``."""
        name = self.config[key]
        return name if name.startswith("/") else "/queue/" + name

    def start(self, extra_args: Optional[List[str]] = None) -> "AgentProcess":
        env = dict(os.environ, PYTHONPATH=ROOT)
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                self.prefix + [sys.executable, "-m", "postprocessing", "--config", self.config_path, "run"]
                + list(extra_args or []), stdout=err, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        self.wait_log("connected to broker", timeout=30)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            with open(self.config["log_file"], encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def wait_log(self, text: str, timeout: float = 30.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("agent exited (%s) before logging %r:\n%s" % (
                    self.proc.returncode, text, self.tail()))
            if time.monotonic() > deadline:
                raise AssertionError("agent did not log %r in %.0f s:\n%s" % (text, timeout, self.tail()))
            time.sleep(0.05)

    def tail(self, lines: int = 40) -> str:
        out = self.log().splitlines()[-lines:]
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as handle:
                out += ["--- stderr ---"] + handle.read().splitlines()[-lines:]
        except FileNotFoundError:
            pass
        return "\n".join(out)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the graceful exit; returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("agent ignored SIGTERM for %.0f s:\n%s" % (timeout, self.tail())) from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def children(self) -> List[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []


def wait_listening(client: Any, *agents: AgentProcess, timeout: float = 30.0) -> None:
    """Until ``client`` (subscribed to the agents' heartbeat topic) has a heartbeat from each agent.

    An agent sends its first heartbeat after subscribing to its topics, on the same connection,
    so a ping or a command published from then on reaches it (a topic keeps nothing for a
    subscriber that comes later)."""
    deadline = time.monotonic() + timeout
    for agent in agents:
        while str(agent.pid) not in {beat.get("pid") for beat in client.get(agent.q("heart_beat"))}:
            assert time.monotonic() < deadline, "no heartbeat from the agent in %.0f s:\n%s" % (timeout, agent.tail())
            time.sleep(0.05)

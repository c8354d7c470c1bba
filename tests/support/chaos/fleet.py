"""Agents on the harness's hosts, the job they run, and the marks the jobs leave.

Every job is ``reduce_CHAOS.py``: it reads how long to run and whether to fail from its
data file, and appends its own start and end marks (host, pid, run, wall-clock time) to
``<data_root>/chaos-marks/<host>.jsonl``, and an "alive" mark every second.  A job ended by
SIGTERM (cancel, time limit) marks its end too; one killed with its agent (SIGKILL via
PR_SET_PDEATHSIG) ends at that kill; one that vanished otherwise ends a second after its
last mark.
"""

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from tests.support import ashost
from tests.support.agentproc import ROOT, queue_names
from tests.support.facility import Facility

INSTRUMENT = "CHAOS"
IPTS = "IPTS-1"

JOB_SCRIPT = """
import json, os, signal, sys, time

spec = json.load(open(sys.argv[1]))
host = os.environ.get("CHAOS_HOST", "?")
marks = os.path.join(%(marks)r, host + ".jsonl")


def mark(event, **extra):
    line = dict(ev=event, host=host, pid=os.getpid(), run=spec["run"], t=time.time(), **extra)
    fd = os.open(marks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (json.dumps(line) + "\\n").encode())
    os.close(fd)


def terminated(signum, frame):
    mark("end", status="terminated")
    sys.exit(1)


signal.signal(signal.SIGTERM, terminated)
mark("start")
end = time.time() + spec["sleep"]
while time.time() < end:
    time.sleep(min(1.0, max(0.0, end - time.time())))
    mark("alive")
open(os.path.join(sys.argv[2], "run_%%d.out" %% spec["run"]), "a").write("%%d\\n" %% os.getpid())
mark("end", status="fail" if spec["fail"] else "ok")
if spec["fail"]:
    sys.exit("chaos: this run fails on purpose")
"""


@dataclass
class Execution:
    host: str
    pid: int
    run: int
    start: float
    end: float
    status: str


class Jobs:
    """The facility tree of the harness: the job script, run files, and the marks directory."""

    def __init__(self, data_root: str) -> None:
        self.facility = Facility(data_root)
        self.marks = os.path.join(data_root, "chaos-marks")
        os.makedirs(self.marks, exist_ok=True)
        self.facility.script(INSTRUMENT, JOB_SCRIPT % {"marks": self.marks})

    def request(self, run: int, sleep: float, fail: bool) -> Dict[str, Any]:
        """The body of a request for ``run``; its data file says how the job behaves."""
        spec = json.dumps({"run": run, "sleep": sleep, "fail": fail}).encode()
        path = self.facility.data_file(INSTRUMENT, IPTS, run, content=spec)
        return {"facility": self.facility.facility, "instrument": INSTRUMENT, "ipts": IPTS,
                "run_number": str(run), "data_file": path}

    def executions(self, kills: Dict[str, List[float]]) -> List[Execution]:
        """Every job that started, with its end (marked, its agent's kill, or a second after its last mark)."""
        starts: Dict[Any, Dict[str, Any]] = {}
        ends: Dict[Any, Dict[str, Any]] = {}
        seen: Dict[Any, float] = {}
        for name in os.listdir(self.marks):
            with open(os.path.join(self.marks, name), encoding="utf-8") as handle:
                for line in handle:
                    if not line.endswith("\n"):
                        continue
                    mark = json.loads(line)
                    key = (mark["host"], mark["pid"], mark["run"])
                    seen[key] = max(seen.get(key, 0.0), mark["t"])
                    if mark["ev"] in ("start", "end"):
                        (starts if mark["ev"] == "start" else ends)[key] = mark
        out = []
        for key, start in starts.items():
            end = ends.get(key)
            if end is not None:
                out.append(Execution(key[0], key[1], key[2], start["t"], end["t"], end["status"]))
                continue
            later = [k for k in kills.get(key[0], []) if k >= start["t"]]
            if later and min(later) <= seen[key] + 1.0:
                out.append(Execution(key[0], key[1], key[2], start["t"], min(later), "killed"))
            else:
                out.append(Execution(key[0], key[1], key[2], start["t"], seen[key] + 1.0, "vanished"))
        return sorted(out, key=lambda e: e.start)


class FleetAgent:
    """One agent process on ``host``, started with ``prefix`` (``ip netns exec HOST``), under
    ``host`` as its host name, which its claims and outcomes carry.

    ``{host}`` in a string config value becomes the host's name (say, a per-host journal path).
    """

    def __init__(self, workdir: str, host: str, prefix: List[str], config: Dict[str, Any]) -> None:
        self.host = host
        self.prefix = prefix
        own = {k: v.replace("{host}", host) if isinstance(v, str) else v for k, v in config.items()}
        self.config = dict(own, log_file=os.path.join(workdir, "%s.log" % host))
        # Each host keeps its own run journal, across restarts of its agent.
        self.config.setdefault("journal_path", os.path.join(workdir, "%s.journal.sqlite3" % host))
        self.config_path = os.path.join(workdir, "%s.conf" % host)
        self.stderr_path = os.path.join(workdir, "%s.stderr" % host)
        with open(self.config_path, "w", encoding="utf-8") as handle:
            json.dump(self.config, handle, indent=1)
        self.proc: Optional[subprocess.Popen] = None  # type: ignore[type-arg]
        self.kills: List[float] = []

    def start(self) -> "FleetAgent":
        env = dict(os.environ, PYTHONPATH=ROOT, CHAOS_HOST=self.host)
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                self.prefix + ashost.prefix(self.host)
                + [sys.executable, "-m", "postprocessing", "--config", self.config_path, "run"],
                stdout=err, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, when: float) -> None:
        """SIGKILL, as a crash; ``when`` is recorded as the end of the jobs it had."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.kills.append(when)

    def stop(self, timeout: float = 60.0) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(float("inf"))

    def log(self) -> str:
        try:
            with open(self.config["log_file"], encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""


def agent_config(broker: Any, data_root: str, prefix: str, max_procs: int,
                 reconnect_max_sec: Optional[float], extra: Dict[str, Any]) -> Dict[str, Any]:
    """The configuration every agent of the fleet shares (its log file is set per host)."""
    cfg: Dict[str, Any] = {
        "brokers": [[broker.host, broker.port]], "amq_user": broker.user, "amq_pwd": broker.password,
        "broker_type": broker.kind, "allow_root": True, "data_root": data_root,
        "heartbeat_interval_sec": 5, "admission_max_load_per_cpu": 0, "admission_min_free_mem_perc": 0,
        "kill_grace_sec": 2, "job_nice": 0, "stomp_heartbeat_ms": 2000, "max_procs": max_procs,
        "jobs_per_instrument": 0, "task_time_limit_minutes": 30,
        "job_env_passthrough": ["PATH", "HOME", "LANG", "PYTHONPATH", "CHAOS_HOST"],
    }
    if reconnect_max_sec is not None:
        cfg["reconnect_max_sec"] = reconnect_max_sec
    cfg.update(queue_names(prefix))
    cfg.update(extra)
    return cfg

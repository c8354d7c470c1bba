"""``postprocessing start|stop|restart|status``: the classic daemon, with a real broker and real jobs."""

import os
import signal
import subprocess
import time

import psutil
import pytest

from tests.conftest import base_config
from tests.support.cli import assert_no_traceback, run_cli, write_config

pytestmark = pytest.mark.broker

OK_SCRIPT = """
import sys, time
text = open(sys.argv[1]).read()
time.sleep(float(text) if text.isdigit() else 0)
"""


@pytest.fixture
def daemon_conf(broker, facility, tmp_path, make_agent):
    """A config for a daemon using the make_agent queue names (so ``client`` hears its outcomes)."""
    agent = make_agent("reference")
    cfg = dict(agent.config)
    cfg.update(pid_file=str(tmp_path / "run" / "pp.pid"), log_file=str(tmp_path / "log" / "daemon.log"),
               umask="027")
    path = write_config(str(tmp_path / "daemon.conf"), cfg)
    yield path, cfg, agent
    try:
        pid = int(open(cfg["pid_file"]).read())
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(0.05)


def log_of(cfg):
    try:
        return open(cfg["log_file"]).read()
    except FileNotFoundError:
        return ""


def test_start_status_stop(daemon_conf, facility, client):
    path, cfg, agent = daemon_conf
    assert run_cli(path, "status").returncode == 3

    proc = run_cli(path, "start")
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    pid = int(open(cfg["pid_file"]).read())
    assert "started (pid %d" % pid in proc.stdout
    status = run_cli(path, "status")
    assert status.returncode == 0 and "running (pid %d)" % pid in status.stdout
    with open("/proc/%d/status" % pid) as handle:
        assert "Umask:\t0027" in handle.read()
    assert os.getsid(pid) != os.getsid(0), "the daemon has a session of its own"
    wait_for(lambda: "connected to broker" in log_of(cfg), what="the daemon to connect")

    again = run_cli(path, "start")
    assert again.returncode == 1
    assert "already running (pid %d" % pid in again.stderr
    assert_no_traceback(again)

    facility.script("CNCS", OK_SCRIPT)
    data = facility.run("CNCS", "IPTS-1", 1)
    client.send(agent.q("reduction_data_ready"), data)
    client.wait(agent.q("reduction_complete"))

    stop = run_cli(path, "stop")
    assert stop.returncode == 0, stop.stderr
    assert "stopped (pid %d)" % pid in stop.stdout
    assert not os.path.exists(cfg["pid_file"])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert run_cli(path, "status").returncode == 3
    assert "agent stopped" in log_of(cfg)
    again = run_cli(path, "stop")
    assert again.returncode == 0 and "not running" in again.stdout


def test_stop_waits_for_running_jobs(daemon_conf, facility, client):
    path, cfg, agent = daemon_conf
    facility.script("CNCS", OK_SCRIPT)
    assert run_cli(path, "start").returncode == 0
    wait_for(lambda: "connected to broker" in log_of(cfg), what="the daemon to connect")
    data = facility.run("CNCS", "IPTS-1", 2)
    facility.data_file("CNCS", "IPTS-1", 2, content=b"3")
    client.send(agent.q("reduction_data_ready"), data)
    client.wait(agent.q("reduction_started"))

    began = time.monotonic()
    stop = run_cli(path, "stop")
    assert stop.returncode == 0, stop.stderr
    assert time.monotonic() - began > 1.5
    assert "waiting for running jobs" in stop.stderr
    complete = client.get(agent.q("reduction_complete"))
    assert complete and complete[0]["run_number"] == "2"
    assert not client.get(agent.q("reduction_error"))


def test_stale_pidfile(daemon_conf):
    path, cfg, _ = daemon_conf
    gone = subprocess.Popen(["true"])
    gone.wait()
    os.makedirs(os.path.dirname(cfg["pid_file"]), exist_ok=True)
    with open(cfg["pid_file"], "w") as handle:
        handle.write("%d\n" % gone.pid)
    status = run_cli(path, "status")
    assert status.returncode == 1
    assert "dead but pidfile %s exists (pid %d)" % (cfg["pid_file"], gone.pid) in status.stdout

    with open(cfg["pid_file"], "w") as handle:
        handle.write("%d\n" % os.getpid())
    assert run_cli(path, "status").returncode == 1, "a live pid that is not an agent is stale too"

    start = run_cli(path, "start")
    assert start.returncode == 0, start.stderr
    assert "removed stale pidfile" in start.stderr
    assert run_cli(path, "status").returncode == 0
    restart = run_cli(path, "restart")
    assert restart.returncode == 0, restart.stderr
    assert "stopped (pid" in restart.stdout and "started (pid" in restart.stdout
    assert run_cli(path, "stop").returncode == 0


def test_stop_a_foreground_agent_by_pid(make_agent):
    agent = make_agent().start()
    proc = run_cli(agent.config_path, "stop", "--pid=%d" % agent.pid, "--timeout", "60")
    assert proc.returncode == 0, proc.stderr
    assert agent.proc.wait(timeout=10) == 0
    assert "agent stopped" in agent.log()
    again = make_agent("again").start()
    with open(again.config_path, "w") as handle:
        handle.write("{broken")
    proc = run_cli(again.config_path, "stop", "--pid=%d" % again.pid, "--timeout", "60")
    assert proc.returncode == 0, proc.stderr
    assert "is not valid JSON" in proc.stderr and "going on with the defaults" in proc.stderr
    assert again.proc.wait(timeout=10) == 0
    assert run_cli(again.config_path, "stop").returncode == 2, "without --pid the config is needed"
    empty = run_cli(agent.config_path, "stop", "--pid=")
    assert empty.returncode == 0 and "not running" in empty.stdout
    bad = run_cli(agent.config_path, "stop", "--pid=abc")
    assert bad.returncode == 2 and "not a process id" in bad.stderr


def test_start_reports_problems_on_the_terminal(broker, facility, tmp_path):
    cfg = base_config(broker, facility, "DAEMONBAD")
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg.update(pid_file=str(blocker / "pp.pid"), log_file=str(tmp_path / "d.log"))
    path = write_config(str(tmp_path / "bad.conf"), cfg)
    proc = run_cli(path, "start")
    assert proc.returncode == 2
    assert "configuration key 'pid_file': cannot read" in proc.stderr
    assert_no_traceback(proc)
    status = run_cli(path, "status")
    assert status.returncode == 4 and "status unknown" in status.stdout

    port_holder = __import__("socket").socket()
    port_holder.bind(("127.0.0.1", 0))
    port_holder.listen()
    cfg.update(pid_file=str(tmp_path / "pp.pid"), metrics_port=port_holder.getsockname()[1],
               metrics_address="127.0.0.1")
    write_config(path, cfg)
    try:
        proc = run_cli(path, "start")
    finally:
        port_holder.close()
    assert proc.returncode == 1
    assert "the daemon did not start: configuration key 'metrics_port': cannot listen" in proc.stderr
    assert not os.path.exists(cfg["pid_file"])
    assert run_cli(path, "status").returncode == 3

    cfg.update(log_file="")
    write_config(path, cfg)
    proc = run_cli(path, "start")
    assert proc.returncode == 2 and "the daemon needs a log file" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the root check needs root")
def test_start_refuses_root_unless_allowed(daemon_conf):
    path, cfg, _ = daemon_conf
    write_config(path, dict(cfg, allow_root=False))
    proc = run_cli(path, "start")
    assert proc.returncode == 2 and "refusing to run as root" in proc.stderr
    assert run_cli(path, "restart").returncode == 2
    assert not os.path.exists(cfg["pid_file"])
    proc = run_cli(path, "start", "--allow-root")
    assert proc.returncode == 0, proc.stderr
    assert run_cli(path, "stop").returncode == 0

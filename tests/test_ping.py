"""``postprocessing ping`` against real agents on the real broker."""

import json
import os

import pytest

from postprocessing import __version__
from tests.support.cli import assert_no_traceback, broker_config, run_cli, write_config

pytestmark = pytest.mark.broker

SLOW_SCRIPT = "import time\ntime.sleep(30)\n"


def test_two_agents_answer_with_their_running_jobs(make_agent, facility, client):
    facility.script("CNCS", SLOW_SCRIPT)
    first = make_agent("first").start()
    second = make_agent("second").start()
    client.send(first.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
    client.wait(first.q("reduction_started"))

    proc = run_cli(first.config_path, "ping", "--wait", "2", "--json", "--expect", "2")
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["count"] == 2 and report["ok"] is True and report["expected"] == 2
    by_pid = {agent["pid"]: agent for agent in report["agents"]}
    assert set(by_pid) == {first.pid, second.pid}
    assert sorted(a["running_jobs"] for a in report["agents"]) == [0, 1]
    for agent in report["agents"]:
        assert agent["host"] == os.uname().nodename
        assert agent["version"] == __version__
        assert 0 <= agent["latency_ms"] < 2000

    proc = run_cli(first.config_path, "ping", "--wait", "1.5")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["HOST", "PID", "LATENCY", "RUNNING", "VERSION"]
    rows = [line.split() for line in lines[1:3]]
    assert {int(r[1]) for r in rows} == {first.pid, second.pid}
    assert all(r[0] == os.uname().nodename and r[3] == "ms" and r[5] == __version__ for r in rows)
    assert lines[3] == "2 agents answered within 1.5 s"


def test_expect_more_than_answered_fails(make_agent):
    agent = make_agent().start()
    proc = run_cli(agent.config_path, "ping", "--wait", "1", "--expect", "3")
    assert proc.returncode == 1
    assert "1 agent answered within 1 s (expected at least 3)" in proc.stdout
    proc = run_cli(agent.config_path, "ping", "--wait", "1", "--expect", "3", "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["ok"] is False


def test_no_agent_answers(broker, tmp_path):
    path = write_config(str(tmp_path / "ping.conf"),
                        broker_config(broker, heartbeat_ping="/topic/PING_NOBODY_%d" % os.getpid()))
    proc = run_cli(path, "ping", "--wait", "1")
    assert proc.returncode == 1
    assert "0 agents answered" in proc.stdout
    assert run_cli(path, "ping", "--wait", "1", "--expect", "0").returncode == 0


def test_ping_errors_are_clear(broker, tmp_path):
    path = write_config(str(tmp_path / "bad.conf"), {"brokers": [["127.0.0.1", 1]], "connect_timeout_sec": 1})
    proc = run_cli(path, "ping", "--wait", "1")
    assert proc.returncode == 1
    assert "cannot connect to the broker" in proc.stderr
    assert_no_traceback(proc)
    wrong = write_config(str(tmp_path / "wrong.conf"), broker_config(broker, amq_pwd="wrong"))
    proc = run_cli(wrong, "ping", "--wait", "1")
    assert proc.returncode == 1
    assert "cannot connect to the broker" in proc.stderr
    assert_no_traceback(proc)
    proc = run_cli(path, "ping", "--wait", "0")
    assert proc.returncode == 2 and "--wait must be greater than 0" in proc.stderr

"""Issue 13, end to end with two real agents on the real broker: status messages,
``postprocessing fleet`` (in tmux and with --json), drain/resume, pause/unpause (across a
restart), shutdown, authorisation, and ``postprocessing logs``."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from postprocessing import __version__
from postprocessing.devtools.brokerproc import free_port
from tests.support.agentproc import ROOT, wait_listening
from tests.support.cli import assert_no_traceback, run_cli
from tests.test_metrics import scrape, wait_metric

pytestmark = pytest.mark.broker

HOST = os.uname().nodename
SLOW = "import time\nprint('reducing', flush=True)\ntime.sleep(%s)\nprint('done', flush=True)\n"


def agents(make_agent, client, **overrides):
    """Two agents obeying the test client's broker user; the client hears their statuses."""
    overrides.setdefault("control_users", [client.user])
    overrides.setdefault("job_nice", 19)  # at or above the agent's own niceness, whatever the test runs under
    first = make_agent("first", **overrides)
    second = make_agent("second", **overrides)
    client.subscribe(first.q("fleet_status"))
    first.start()
    second.start()
    wait_listening(client, first, second)  # a command sent before they subscribe to the control topic is lost
    return first, second


def fleet_json(agent, *extra):
    proc = run_cli(agent.config_path, "fleet", "--json", "--interval", "1.5", *extra)
    assert_no_traceback(proc)
    return proc, json.loads(proc.stdout)


def by_pid(report):
    return {node["pid"]: node for node in report["nodes"]}


def control(agent, *args):
    proc = run_cli(agent.config_path, *args, "--json", "--wait", "2")
    assert_no_traceback(proc)
    return proc, json.loads(proc.stdout)


def statuses(client, agent, pid, since=0):
    return [s for s in client.received[agent.q("fleet_status")][since:] if s.get("pid") == pid]


def wait_status(client, agent, pid, test, timeout=30.0, since=0):
    """The newest status of ``pid`` (among those from the ``since``-th on) that passes ``test``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for status in reversed(statuses(client, agent, pid, since)):
            if test(status):
                return status
        time.sleep(0.1)
    raise AssertionError("no status of %d matched: %r" % (pid, statuses(client, agent, pid)[-2:]))


def ran(agent, label):
    return "[%s] starting" % label in agent.log()


# -- status messages and postprocessing fleet ----------------------------------------------------
def test_status_messages_and_fleet_json(make_agent, facility, client):
    facility.script("CNCS", SLOW % 4)
    first, second = agents(make_agent, client)
    for agent in (first, second):  # on start, and then every heartbeat (1 s here)
        wait_status(client, first, agent.pid, lambda s: s["state"] == "running")
    client.send(first.q("reduction_data_ready"), facility.run("CNCS", "IPTS-7", 12))
    client.wait(first.q("reduction_started"))
    busy = wait_status(client, first, first.pid, lambda s: s["running"], timeout=10) if ran(first, "CNCS 12") \
        else wait_status(client, first, second.pid, lambda s: s["running"], timeout=10)
    run = busy["running"][0]
    assert (run["instrument"], run["run_number"], run["ipts"], run["processor"]) == ("CNCS", "12", "IPTS-7",
                                                                                      "reduction")
    assert run["elapsed_sec"] >= 0 and busy["slots"] == {"used": 1, "total": 5}
    assert busy["host"] == HOST and busy["version"] == __version__ and busy["uptime_sec"] > 0

    proc, report = fleet_json(first, "--expect", "2")
    assert proc.returncode == 0, proc.stderr
    nodes = by_pid(report)
    assert set(nodes) == {first.pid, second.pid} and report["live"] == 2 and report["ok"] is True
    running = [n for n in nodes.values() if n["running"]]
    assert len(running) == 1 and running[0]["running"][0]["run_number"] == "12"
    assert running[0]["running"][0]["rss_bytes"] > 0

    client.wait(first.q("reduction_complete"))
    done = wait_status(client, first, busy["pid"], lambda s: s["outcomes"] and not s["running"])
    outcome = done["outcomes"][-1]
    assert outcome["destination"] == first.q("reduction_complete") and outcome["run_number"] == "12"
    assert outcome["error"] is None and outcome["duration_sec"] >= 4

    proc, report = fleet_json(first, "--expect", "3")
    assert proc.returncode == 1 and report["ok"] is False and report["live"] == 2
    # The SNS heartbeat is unchanged.
    beat = client.wait(first.q("heart_beat"))[0]
    assert set(beat) == {"src_name", "role", "status", "pid"}


def test_fleet_in_a_terminal_refreshes_in_place_and_shows_a_silent_node_missing(make_agent, facility, client,
                                                                                tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (scripts/install-deps.sh installs it)")
    facility.script("CNCS", SLOW % 30)
    first, second = agents(make_agent, client)
    client.send(first.q("reduction_data_ready"), facility.run("CNCS", "IPTS-7", 3))
    client.wait(first.q("reduction_started"))
    session = "ppfleet%d" % os.getpid()
    command = "PYTHONPATH=%s %s -m postprocessing fleet --watch --interval 1 --config %s; echo EXIT=$?; sleep 60" % (
        ROOT, sys.executable, first.config_path)
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "40", command], check=True)
    try:
        def capture():
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                                  check=True).stdout

        def wait_pane(test, timeout=20.0):
            deadline = time.monotonic() + timeout
            while True:
                pane = capture()
                if test(pane):
                    return pane
                if time.monotonic() > deadline:
                    raise AssertionError("pane:\n%s" % pane)
                time.sleep(0.3)

        pane = wait_pane(lambda p: "2 nodes live" in p and "running: CNCS 3 IPTS-7 reduction" in p)
        (tmp_path / "pane-live.txt").write_text(pane)
        assert pane.count("HOST") == 1 and pane.count("fleet at ") == 1  # redrawn in place, not appended
        rows = [line.split() for line in pane.splitlines() if line.startswith(HOST)]
        assert {int(r[1]) for r in rows} == {first.pid, second.pid}
        assert all(r[2] == "running" for r in rows)

        second.kill()
        pane = wait_pane(lambda p: "1 node live, 1 missing" in p)
        (tmp_path / "pane-missing.txt").write_text(pane)
        rows = {int(r[1]): r[2] for r in (line.split() for line in pane.splitlines() if line.startswith(HOST))}
        assert rows == {first.pid: "running", second.pid: "missing"}
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        pane = wait_pane(lambda p: "EXIT=" in p)
        assert "EXIT=0" in pane and "Traceback" not in pane
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)


# -- drain and resume ----------------------------------------------------------------------------
def test_drain_finishes_what_runs_takes_nothing_new_and_resume_undoes_it(make_agent, facility, client):
    facility.script("CNCS", SLOW % 3)
    first, second = agents(make_agent, client)
    proc, report = control(first, "drain", "--host", "%s:%d" % (HOST, first.pid))
    assert proc.returncode == 0, proc.stdout
    [answer] = report["answers"]
    assert answer["pid"] == first.pid and answer["result"] == "done" and answer["draining"] is True
    assert "draining" in answer["detail"]
    wait_status(client, first, first.pid, lambda s: s["state"] == "draining")
    assert "control command drain (host %s:%d) from %s" % (HOST, first.pid, client.user) in first.log()

    for n in (1, 2, 3):
        client.send(first.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", n))
    client.wait(first.q("reduction_complete"), count=3, timeout=60)
    assert not any(ran(first, "CNCS %d" % n) for n in (1, 2, 3))
    assert all(ran(second, "CNCS %d" % n) for n in (1, 2, 3))
    proc, report = fleet_json(first, "--expect", "2")
    assert by_pid(report)[first.pid]["state"] == "draining" and by_pid(report)[first.pid]["slots"]["used"] == 0

    proc, report = control(first, "resume", "--all")
    assert proc.returncode == 0 and len(report["answers"]) == 2
    mine = [a for a in report["answers"] if a["pid"] == first.pid][0]
    assert mine["detail"] == "resumed: taking runs again" and mine["draining"] is False
    wait_status(client, first, first.pid, lambda s: s["state"] == "running")
    second.stop()
    client.send(first.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 4))
    client.wait(first.q("reduction_complete"), count=4, timeout=60)
    assert ran(first, "CNCS 4")


def test_a_draining_agent_finishes_its_running_job(make_agent, facility, client):
    facility.script("CNCS", SLOW % 4)
    first, second = agents(make_agent, client)
    second.stop()
    client.send(first.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
    client.wait(first.q("reduction_started"))
    proc, report = control(first, "drain", "--all")
    assert report["answers"][0]["detail"] == "draining: 1 running go on, nothing new starts"
    since = len(client.received[first.q("fleet_status")])
    client.wait(first.q("reduction_complete"), timeout=30)
    idle = wait_status(client, first, first.pid, lambda s: not s["running"], since=since)
    assert idle["state"] == "draining" and first.proc.poll() is None


# -- pause and unpause -----------------------------------------------------------------------------
def test_pause_holds_an_instruments_runs_at_the_broker_across_a_restart(make_agent, facility, client):
    facility.script("CNCS", SLOW % 0)
    facility.script("EQSANS", SLOW % 0)
    first, second = agents(make_agent, client)
    proc, report = control(first, "pause", "--instrument", "cncs", "--expect", "2")
    assert proc.returncode == 0 and {a["pid"] for a in report["answers"]} == {first.pid, second.pid}
    assert all(a["paused_instruments"] == ["CNCS"] for a in report["answers"])

    client.send(first.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
    client.send(first.q("reduction_data_ready"), facility.run("EQSANS", "IPTS-2", 2))
    client.wait(first.q("reduction_complete"), timeout=30)  # the other instrument goes on
    time.sleep(3)
    assert len(client.received[first.q("reduction_complete")]) == 1
    assert not client.received[first.q("reduction_started")][1:]
    assert client.received[first.q("reduction_complete")][0]["instrument"] == "EQSANS"
    proc, report = fleet_json(first, "--expect", "2")
    nodes = list(report["nodes"])
    assert all("CNCS" in n["paused_instruments"] for n in nodes)
    assert sum(n["held_paused"] for n in nodes) == 1
    holder, other = (first, second) if by_pid(report)[first.pid]["held_paused"] else (second, first)

    # The holder restarts: the run goes back to the broker, and the pause survives.
    holder.stop()
    holder.start()
    proc, report = fleet_json(first, "--expect", "2")
    nodes = by_pid(report)
    assert set(nodes[holder.pid]["paused_instruments"]) == {"CNCS"}
    assert sum(n["held_paused"] for n in nodes.values()) == 1
    assert "CNCS is paused (since" in holder.log()
    assert len(client.received[first.q("reduction_complete")]) == 1

    proc, report = control(first, "unpause", "--all", "--expect", "2")
    assert proc.returncode == 0
    assert any("unpaused CNCS: 1 held runs may start" == a["detail"] for a in report["answers"])
    done = client.wait(first.q("reduction_complete"), count=2, timeout=30)
    assert done[1]["instrument"] == "CNCS"
    time.sleep(2)
    assert len(client.received[first.q("reduction_complete")]) == 2
    proc, report = fleet_json(first, "--expect", "2")
    assert all(n["paused_instruments"] == {} for n in report["nodes"])


# -- shutdown and authorisation ---------------------------------------------------------------------
def test_shutdown_stops_the_named_agent_gracefully(make_agent, facility, client):
    facility.script("CNCS", SLOW % 3)
    first, second = agents(make_agent, client)
    second.stop()
    second.start()
    client.send(first.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
    client.wait(first.q("reduction_started"))
    busy = first if ran(first, "CNCS 1") else second
    proc, report = control(first, "shutdown", "--host", "%s:%d" % (HOST, busy.pid))
    assert proc.returncode == 0 and report["answers"][0]["detail"].startswith("shutting down: 1 running")
    assert busy.proc.wait(timeout=30) == 0
    assert client.wait(first.q("reduction_complete"))[0]["run_number"] == "1"
    assert "stopping (shutdown command from %s)" % client.user in busy.log()
    other = second if busy is first else first
    assert other.proc.poll() is None
    wait_status(client, first, busy.pid, lambda s: s["state"] == "stopped")


def test_commands_from_other_users_or_forged_headers_are_refused(make_agent, facility, client):
    first, second = agents(make_agent, client, control_users=["operator"])
    proc, report = control(first, "drain", "--all", "--expect", "2")
    assert proc.returncode == 1 and len(report["answers"]) == 2
    assert all(a["result"] == "refused" and a["detail"] == "refused: broker user %s is not in control_users"
               % client.user for a in report["answers"])
    reply = "/topic/%s.REPLY" % first.q("fleet_control")[len("/topic/"):]
    client.subscribe(reply)
    client.send(first.q("fleet_control"), {"command": "shutdown", "all": True, "reply_to": reply, "id": "x"},
                headers={"JMSXUserID": "operator", "_AMQ_VALIDATED_USER": "operator"})
    time.sleep(3)
    assert all(a.get("result") != "done" for a in client.received[reply])
    assert first.proc.poll() is None and second.proc.poll() is None
    wait_status(client, first, first.pid, lambda s: s["state"] == "running")
    assert "control command drain from %s refused" % client.user in first.log()


# -- logs ---------------------------------------------------------------------------------------------
def test_logs_prints_and_follows_a_runs_reduction_log(make_agent, facility, client):
    facility.script("CNCS", "import sys, time\nprint('reducing', flush=True)\nprint('warned', file=sys.stderr, "
                            "flush=True)\ntime.sleep(4)\nprint('finished', flush=True)\n")
    first, second = agents(make_agent, client)
    client.send(first.q("reduction_data_ready"), facility.run("CNCS", "IPTS-9", 5))
    client.wait(first.q("reduction_started"))
    log_dir = os.path.join(facility.output_dir("CNCS", "IPTS-9"), "reduction_log")
    deadline = time.monotonic() + 10
    while "reducing" not in open(os.path.join(log_dir, "CNCS_5.nxs.h5.log")).read() if os.path.exists(
            os.path.join(log_dir, "CNCS_5.nxs.h5.log")) else True:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    env = dict(os.environ, PYTHONPATH=ROOT)
    follow = subprocess.Popen([sys.executable, "-m", "postprocessing", "logs", "--instrument", "CNCS", "--run", "5",
                               "--follow", "--config", first.config_path], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    out, err = follow.communicate(timeout=60)
    assert follow.returncode == 0, err
    assert "reduction log: %s" % os.path.join(log_dir, "CNCS_5.nxs.h5.log") in out
    assert "error file:    %s" % os.path.join(log_dir, "CNCS_5.nxs.h5.err") in out
    assert out.index("reducing") < out.index("following while CNCS 5 runs") < out.index("finished")
    assert "warned" in out and "CNCS 5 is not running" in out
    failed = client.wait(first.q("reduction_error"))[0]  # the SNS rule: anything on stderr is an error
    assert failed["run_number"] == "5"
    deadline = time.monotonic() + 10
    while not [o for st in client.received[first.q("fleet_status")] for o in st["outcomes"] if o["error"]]:
        assert time.monotonic() < deadline, "no status carries the run's error line"
        time.sleep(0.1)
    [outcome] = {json.dumps(o) for st in client.received[first.q("fleet_status")] for o in st["outcomes"]}
    outcome = json.loads(outcome)
    assert outcome["destination"] == first.q("reduction_error") and outcome["run_number"] == "5"
    assert outcome["error"] == failed["error"].splitlines()[0]

    proc = run_cli(first.config_path, "logs", "--instrument", "CNCS", "--run", "5", "--ipts", "IPTS-9")
    assert proc.returncode == 0 and "reducing\nfinished\n" in proc.stdout and "warned" in proc.stdout
    proc = run_cli(first.config_path, "logs", "--instrument", "CNCS", "--run", "99")
    assert proc.returncode == 1 and "no data file of CNCS run 99" in proc.stderr
    assert_no_traceback(proc)


def test_drain_and_pause_show_in_the_agents_metrics(make_agent, client):
    """The Prometheus gauges follow the control commands (docs/operations.md, alert "paused over a day")."""
    port = free_port()
    first = make_agent("first", control_users=[client.user], job_nice=19, metrics_port=port,
                       metrics_address="127.0.0.1").start()
    wait_metric(port, ("postprocessing_draining", ()), 0)
    assert scrape(port).get(("postprocessing_paused", (("instrument", "CNCS"),))) is None
    control(first, "drain", "--all")
    wait_metric(port, ("postprocessing_draining", ()), 1)
    control(first, "pause", "--instrument", "CNCS")
    wait_metric(port, ("postprocessing_paused", (("instrument", "CNCS"),)), 1)
    since = scrape(port)[("postprocessing_paused_since_timestamp_seconds", (("instrument", "CNCS"),))]
    assert abs(since - time.time()) < 60
    control(first, "resume", "--all")
    control(first, "unpause", "--instrument", "CNCS")
    wait_metric(port, ("postprocessing_draining", ()), 0)
    assert scrape(port).get(("postprocessing_paused", (("instrument", "CNCS"),))) is None

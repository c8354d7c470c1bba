"""Fleet status and control on the in-memory transport, and the fleet view's logic."""

import json

import pytest

from postprocessing.agent import status
from postprocessing.agent.control import parse_command
from postprocessing.agent.runs import RunState
from postprocessing.errors import InvalidMessage
from postprocessing.fleet.view import Fleet, render
from tests.support.cli import assert_no_traceback, run_cli, write_config
from tests.support.memagent import QUEUE, bodies, make, settle_down, spin

CONTROL = "/topic/POSTPROCESSING.FLEET.CONTROL"
STATUS = "/topic/POSTPROCESSING.FLEET.STATUS"
REPLY = "/topic/REPLIES"
DONE = "/queue/DONE"


def command(transport, user="operator", **fields):
    fields.setdefault("reply_to", REPLY)
    transport.topic(CONTROL, json.dumps(fields).encode(), {"JMSXUserID": user} if user else {})


def replies(transport):
    return bodies(transport, REPLY)


def run(transport, n, inst):
    return transport.publish(QUEUE, json.dumps({"n": str(n), "inst": inst}).encode())


def test_a_paused_instrument_is_held_unacked_and_does_not_block_others():
    agent, transport, proc = make(max_procs=1, control_users=("operator",))
    agent.run_once(0)
    command(transport, command="pause", instrument="a")
    spin(agent, lambda: replies(transport))
    assert replies(transport)[0]["detail"] == "paused A: 0 of its runs running go on, 0 waiting are held"
    run(transport, 1, "A")
    run(transport, 2, "B")
    proc.gate.set()
    spin(agent, lambda: len(transport.acked) == 1)
    settle_down(agent)
    assert proc.ran == ["2"] and [r.state for r in agent.runs] == [RunState.PAUSED]
    assert not transport.queues[QUEUE], "the paused run is held (un-acked), the broker still has it"
    spin(agent, lambda: bodies(transport, STATUS)[-1]["held_paused"] == 1)
    assert bodies(transport, STATUS)[-1]["paused_instruments"].keys() == {"A"}

    # A lost connection gives it back; after the reconnect it is held again, not run.
    transport.drop_connection()
    spin(agent, lambda: agent.connected and agent.runs.count(RunState.PAUSED) == 1)
    settle_down(agent)
    assert proc.ran == ["2"]

    command(transport, command="unpause", instrument="A")
    spin(agent, lambda: len(transport.acked) == 2)
    assert proc.ran == ["2", "1"] and replies(transport)[-1]["detail"] == "unpaused A: 1 held runs may start"


def test_a_pause_survives_a_restart():
    agent, transport, proc = make(control_users=("operator",))
    agent.run_once(0)
    command(transport, command="pause", instrument="A")
    spin(agent, lambda: replies(transport))
    agent.journal.close()
    again, transport2, proc2 = make(journal=agent.config.journal_path, control_users=("operator",))
    assert set(again.holding.paused) == {"A"}
    again.run_once(0)
    run(transport2, 1, "A")
    proc2.gate.set()
    settle_down(again)
    assert proc2.ran == [] and again.runs.count(RunState.PAUSED) == 1


def test_drain_gives_back_what_waits_and_takes_nothing_new_until_resume():
    agent, transport, proc = make(max_procs=2, jobs_per_instrument=1, control_users=("operator",))
    agent.run_once(0)
    run(transport, 1, "A")
    run(transport, 2, "A")  # waits for A's slot
    spin(agent, lambda: agent.runs.count(RunState.RUNNING) == 1 and agent.runs.count(RunState.WAITING) == 1)
    command(transport, command="drain", all=True)
    spin(agent, lambda: replies(transport))
    assert replies(transport)[0]["detail"] == "draining: 1 running go on, nothing new starts"
    settle_down(agent)
    assert len(transport.queues[QUEUE]) == 1 and not agent.runs.in_state(RunState.WAITING)
    run(transport, 3, "B")
    settle_down(agent)
    assert len(transport.queues[QUEUE]) == 2 and bodies(transport, STATUS)[-1]["state"] == "draining"
    proc.gate.set()
    spin(agent, lambda: len(transport.acked) == 1)
    settle_down(agent)
    assert proc.ran == ["1"] and len(transport.queues[QUEUE]) == 2
    command(transport, command="resume", host="host")
    spin(agent, lambda: len(transport.acked) == 3)
    assert sorted(proc.ran) == ["1", "2", "3"]


def test_commands_need_a_vouched_control_user_and_the_right_host():
    agent, transport, _proc = make(control_users=("operator",))
    agent.run_once(0)
    command(transport, user="mallory", command="drain", all=True)
    command(transport, user=None, command="drain", all=True)
    command(transport, command="drain", host="otherhost")
    command(transport, command="drain", host="host:%d" % (agent.pid + 1))
    settle_down(agent)
    assert [r["detail"] for r in replies(transport)] == [
        "refused: broker user mallory is not in control_users", "refused: the broker vouches for no sender"]
    assert not agent.holding.draining
    command(transport, command="shutdown", host="host:%d" % agent.pid, reply_to=CONTROL)  # its own topic
    spin(agent, lambda: agent.stopping)
    assert len(replies(transport)) == 2


def test_a_status_goes_out_on_start_on_change_and_on_request():
    agent, transport, proc = make()
    spin(agent, lambda: bodies(transport, STATUS))
    first = bodies(transport, STATUS)[0]
    assert first["kind"] == "postprocessing-status" and first["state"] == "running"
    assert first["slots"] == {"used": 0, "total": 5} and first["running"] == [] and first["host"] == "host"
    run(transport, 1, "A")
    spin(agent, lambda: any(s["running"] for s in bodies(transport, STATUS)))
    running = [s for s in bodies(transport, STATUS) if s["running"]][0]["running"][0]
    assert running["instrument"] == "A" and running["processor"] == "gate"
    proc.gate.set()
    spin(agent, lambda: bodies(transport, STATUS)[-1]["outcomes"])
    assert bodies(transport, STATUS)[-1]["outcomes"][0]["destination"] == "/queue/DONE"
    count = len(bodies(transport, STATUS))
    transport.topic(CONTROL, json.dumps({"command": "status"}).encode())
    spin(agent, lambda: len(bodies(transport, STATUS)) == count + 1)


def test_a_burst_of_short_runs_sends_a_status_at_its_start_and_one_with_its_end_state():
    agent, transport, proc = make()
    spin(agent, lambda: bodies(transport, STATUS))
    for n in range(1, 21):
        transport.publish(QUEUE, json.dumps({"n": str(n), "inst": "A", "quick": True}).encode())
    spin(agent, lambda: len(bodies(transport, DONE)) == 20)
    during = len(bodies(transport, STATUS))
    assert during <= 3, "%d statuses for 20 runs of a few ms each" % during
    assert agent.status.due is not None, "the end state has not gone out yet, and a timer says when"
    spin(agent, lambda: agent.status.due is None, timeout=status.CHANGE_INTERVAL_SEC + 1)
    last = bodies(transport, STATUS)[-1]
    assert last["running"] == [] and len(last["outcomes"]) == status.OUTCOMES_KEPT


@pytest.mark.parametrize("fields, error", [
    ({"command": "reboot", "all": True}, "unknown command reboot"),
    ({"command": "drain"}, "drain names no agent: give host or all"),
    ({"command": "pause", "all": True}, "pause names no instrument"),
    ({"command": "pause", "instrument": "../x"}, "instrument is not a plain name"),
    ({"command": "drain", "all": True, "reply_to": "/topic/>"}, "reply_to is not a single destination"),
])
def test_bad_commands(fields, error):
    with pytest.raises(InvalidMessage, match=error.replace("(", r"\(")):
        parse_command(json.dumps(fields).encode(), 1000)


def test_the_view_marks_silent_nodes_missing_after_three_intervals():
    now = [100.0]
    fleet = Fleet(clock=lambda: now[0])
    base = {"kind": "postprocessing-status", "host": "n1", "heartbeat_interval_sec": 10, "state": "running",
            "slots": {"used": 1, "total": 5}, "running": [{"instrument": "CNCS", "run_number": "7",
                                                           "ipts": "IPTS-1", "processor": "reduction",
                                                           "elapsed_sec": 75, "rss_bytes": 3 << 20}]}
    assert fleet.add(dict(base, pid=1)) and fleet.add(dict(base, pid=2, host="n2\x1b[2J"))
    assert not fleet.add({"kind": "other"})
    now[0] = 125.0
    fleet.add(dict(base, pid=1))
    now[0] = 131.0
    states = {e["pid"]: e["state"] for e in fleet.entries()}
    assert states == {1: "running", 2: "missing"} and fleet.live() == 1
    text = render(fleet.entries(), expect=2)
    assert "running: CNCS 7 IPTS-1 reduction 1m15s 3 MB" in text
    assert "\x1b" not in text and text.endswith("1 node live, 1 missing (expected at least 2)")


@pytest.mark.parametrize("args, error", [
    (["drain"], "postprocessing drain: name the agents: --host H or --all"),
    (["shutdown", "--wait", "0", "--all"], "postprocessing shutdown: --wait must be greater than 0"),
    (["pause", "--all"], "postprocessing pause: name the instrument: --instrument I"),
    (["unpause"], "postprocessing unpause: name the instrument: --instrument I, or --all"),
    (["pause", "--instrument", "a/b"], "postprocessing pause: --instrument must be a plain name such as CNCS"),
    (["fleet", "--interval", "0"], "postprocessing fleet: --interval must be greater than 0"),
    (["logs", "--instrument", "CNCS", "--run", "x1"], "postprocessing logs: --run must be a run number"),
])
def test_command_line_mistakes_are_usage_errors(tmp_path, args, error):
    path = write_config(str(tmp_path / "pp.conf"), {"brokers": [["127.0.0.1", 1]]})
    proc = run_cli(None, *args, "--config", path)
    assert proc.returncode == 2 and proc.stderr.strip() == error
    assert_no_traceback(proc)


def test_logs_finds_a_runs_files_through_the_layout(tmp_path):
    root = tmp_path / "data"
    nexus = root / "SNS" / "CNCS" / "IPTS-3" / "nexus"
    nexus.mkdir(parents=True)
    (nexus / "CNCS_42.nxs.h5").write_bytes(b"x")
    logs_dir = root / "SNS" / "CNCS" / "IPTS-3" / "shared" / "autoreduce" / "reduction_log"
    logs_dir.mkdir(parents=True)
    (logs_dir / "CNCS_42.nxs.h5.log").write_text("line 1\nline 2\n")
    path = write_config(str(tmp_path / "pp.conf"), {"data_root": str(root)})
    proc = run_cli(path, "logs", "--instrument", "cncs", "--run", "042")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ("reduction log: %s\nerror file:    %s\n--- reduction log ---\nline 1\nline 2\n"
                           "--- error file: not there (yet) ---\n" % (logs_dir / "CNCS_42.nxs.h5.log",
                                                                      logs_dir / "CNCS_42.nxs.h5.err"))
    (root / "SNS" / "CNCS" / "IPTS-4" / "nexus").mkdir(parents=True)
    (root / "SNS" / "CNCS" / "IPTS-4" / "nexus" / "CNCS_42.nxs.h5").write_bytes(b"x")
    proc = run_cli(path, "logs", "--instrument", "CNCS", "--run", "42")
    assert proc.returncode == 1
    assert "CNCS run 42 is in several proposals (IPTS-3, IPTS-4): give --ipts" in proc.stderr

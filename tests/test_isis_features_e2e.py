"""ISIS-style features end to end: retries, skips, cancellation, proposal order, vars, staging."""

import json
import os
import threading
import time

import psutil
import pytest

from tests.conftest import collector
from tests.test_agent_e2e import gone, max_overlap, timed_script

pytestmark = pytest.mark.broker

OK_SCRIPT = """
import sys
open(sys.argv[2] + "reduced.txt", "w").write(sys.argv[1])
"""


def subscribe_extra(client, agent):
    client.subscribe(agent.q("reduction_not_needed"))


# -- retries -------------------------------------------------------------------------------
def test_a_file_that_appears_late_is_reduced_after_a_retry(make_agent, facility, client):
    facility.script("CNCS", OK_SCRIPT)
    agent = make_agent(data_retry_delay_sec=1.5, data_retry_max=4).start()
    msg = facility.run("CNCS", "IPTS-1", 1)
    os.remove(msg["data_file"])
    client.send(agent.q("reduction_data_ready"), msg)

    def appear():
        time.sleep(2.0)
        facility.data_file("CNCS", "IPTS-1", 1)

    threading.Thread(target=appear).start()
    complete = client.wait(agent.q("reduction_complete"), timeout=30)[0]
    assert complete["attempt"] >= 2 and complete["run_number"] == "1"
    assert not client.get(agent.q("postprocess_error"))
    assert agent.log().count("attempt %d of 5 again in 1.5 s" % complete["attempt"]) == 1


def test_a_file_that_never_appears_errors_after_the_last_attempt(make_agent, facility, client):
    agent = make_agent(data_retry_delay_sec=5, data_retry_max=2).start()
    msg = facility.run("CNCS", "IPTS-1", 2)
    os.remove(msg["data_file"])
    client.send(agent.q("reduction_data_ready"), dict(msg, retry_in=1.1))
    t0 = time.monotonic()
    error = client.wait(agent.q("postprocess_error"), timeout=30)[0]
    assert error["error"] == "Data file not found: %s" % msg["data_file"]
    assert error["attempt"] == 3
    assert 2.0 < time.monotonic() - t0 < 8, "retry_in should override the 5 s delay"
    assert agent.log().count("again in 1.1 s") == 2
    assert not client.get(agent.q("reduction_started"))


# -- skips -------------------------------------------------------------------------------
@pytest.mark.parametrize("script, reason", [
    ("import sys\nsys.stderr.write('white beam\\n')\nsys.exit(77)\n", "white beam"),
    ("from postprocessing.script import SkipRun\nraise SkipRun('alignment run')\n", "alignment run"),
    ("SKIP_RUNS = [5, '6', 7]\nraise RuntimeError('must not run')\n", "run 6 is listed in SKIP_RUNS of reduce_CNCS.py"),
])
def test_skips_answer_not_needed(make_agent, facility, client, script, reason):
    facility.script("CNCS", script)
    agent = make_agent()
    subscribe_extra(client, agent)
    agent.start()
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 6))
    skipped = client.wait(agent.q("reduction_not_needed"))[0]
    assert skipped["information"] == reason and skipped["run_number"] == "6"
    assert not client.get(agent.q("reduction_error"))
    assert client.get(agent.q("reduction_started"))


# -- cancellation --------------------------------------------------------------------------
def test_cancel_a_running_and_a_queued_run(make_agent, facility, client):
    facility.script("CNCS", """
        import subprocess, sys, time
        child = subprocess.Popen(["sleep", "300"])
        open(sys.argv[2] + "child.%s" % sys.argv[1][-10:-7], "w").write(str(child.pid))
        time.sleep(300)
    """)
    first = make_agent(name="first", max_procs=1).start()
    second = make_agent(name="second", max_procs=1).start()
    for run in (1, 2, 3):
        client.send(first.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", run))
    client.wait(first.q("reduction_started"), 2, timeout=20)
    running = [m["run_number"] for m in client.get(first.q("reduction_started"))]
    out = facility.output_dir("CNCS", "IPTS-1")
    deadline = time.monotonic() + 15
    names = []
    while len(names) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        names = [n for n in os.listdir(out) if n.startswith("child.")] if os.path.isdir(out) else []
    time.sleep(0.1)
    children = [int(open(os.path.join(out, n)).read()) for n in names]
    assert len(children) == 2
    queued = ({"1", "2", "3"} - set(running)).pop()

    client.send(first.q("reduction_cancel"), {"instrument": "cncs", "run_number": int(running[0]),
                                              "cancel": True, "information": "Requested by alice"})
    client.send(first.q("reduction_cancel"), {"instrument": "CNCS", "run_number": queued, "ipts": "IPTS-1",
                                              "cancel": True, "information": "Requested by bob"})
    client.send(first.q("reduction_cancel"), {"instrument": "CNCS", "run_number": 999, "cancel": True})
    errors = client.wait(first.q("reduction_error"), 2, timeout=30)
    by_run = {e["run_number"]: e for e in errors}
    assert by_run[running[0]]["error"] == "REDUCTION: cancelled"
    assert by_run[running[0]]["cancelled_by"] == "Requested by alice"
    assert by_run[queued]["cancelled_by"] == "Requested by bob"
    assert sum(gone(pid) for pid in children) >= 1
    still = [pid for pid in children if not gone(pid, 0.5)]
    assert len(still) == 1, "exactly the other running run keeps its processes"
    assert first.proc.poll() is None and second.proc.poll() is None
    assert "no such run here" in first.log() + second.log()


def test_a_malformed_cancel_is_harmless(make_agent, client):
    agent = make_agent().start()
    client.send(agent.q("reduction_cancel"), {"instrument": "../x", "run_number": 1, "cancel": True})
    client.send(agent.q("reduction_cancel"), "not json")
    errors = client.wait(agent.q("postprocess_error"), 2)
    assert {e["error"].split(":")[0] for e in errors} == {"Instrument is not a plain name", "Malformed JSON"}
    assert agent.proc.poll() is None


def cancel_then_request(agent, facility, client):
    """A cancel that meets no run here, then a request for that run sent after it."""
    client.send(agent.q("reduction_cancel"), {"instrument": "CNCS", "run_number": 4, "cancel": True,
                                              "information": "Requested by carol"})
    agent.wait_log("no such run here")
    time.sleep(0.05)
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 4))


def test_a_standing_cancel_does_not_stop_a_run_requested_after_it(make_agent, facility, client):
    """Promise 6 on a real broker: a cancel that met no run stands for one queued before it, and
    a request sent after the cancel runs.  The broker's time on each message orders the two:
    ActiveMQ Classic and Artemis stamp ``timestamp``; RabbitMQ ``timestamp_in_ms``, with its
    timestamp interceptor on (docs/brokers.md), as on the test nodes."""
    facility.script("CNCS", OK_SCRIPT)
    agent = make_agent().start()
    cancel_then_request(agent, facility, client)
    assert client.wait(agent.q("reduction_complete"))[0]["run_number"] == "4"
    assert not client.get(agent.q("reduction_error"))
    assert "this request was sent" in agent.log() and "the cancel stands on" in agent.log()
    assert "stamps no broker time" not in agent.log()


@pytest.mark.rabbitmq_only
def test_without_broker_times_a_standing_cancel_stops_the_next_request(make_agent, facility, private_broker):
    """The stated limit (docs/delivery.md, "Limits, stated"): a RabbitMQ without its timestamp
    interceptor says nothing of when it took a message in, so a standing cancel stops any
    request for its run that comes within ``cancel_window_sec``."""
    plain = private_broker("plain", timestamps=False)
    facility.script("CNCS", OK_SCRIPT)
    agent = make_agent(on=plain).start()
    watcher = collector(plain)
    try:
        watcher.subscribe(agent.q("reduction_complete"), agent.q("reduction_error"))
        cancel_then_request(agent, facility, watcher)
        assert watcher.wait(agent.q("reduction_error"))[0]["cancelled_by"] == "Requested by carol"
        assert not watcher.get(agent.q("reduction_complete"))
        assert agent.log().count("RabbitMQ stamps no broker time") == 1
    finally:
        watcher.close()


def test_a_cancel_stops_a_run_waiting_for_its_data_retry(make_agent, facility, client):
    """The retry's re-send waits at the broker (scheduled, or RabbitMQ's delay queue) when the
    cancel comes: the cancel stands, and the retry, a request taken in before it, is cancelled."""
    facility.script("CNCS", OK_SCRIPT)
    agent = make_agent(data_retry_delay_sec=3, data_retry_max=4).start()
    msg = facility.run("CNCS", "IPTS-1", 5)
    os.remove(msg["data_file"])
    client.send(agent.q("reduction_data_ready"), msg)
    agent.wait_log("attempt 2 of 5 again in 3 s")
    client.send(agent.q("reduction_cancel"), {"instrument": "CNCS", "run_number": 5, "cancel": True,
                                              "information": "Requested by dave"})
    agent.wait_log("no such run here")
    facility.data_file("CNCS", "IPTS-1", 5)
    error = client.wait(agent.q("reduction_error"), timeout=30)[0]
    assert error["cancelled_by"] == "Requested by dave" and error["run_number"] == "5"
    assert not client.get(agent.q("reduction_complete"))
    assert not os.path.exists(os.path.join(facility.output_dir("CNCS", "IPTS-1"), "reduced.txt"))


# -- per-proposal ordering -------------------------------------------------------------------
def test_runs_of_one_proposal_are_serialised_others_go_ahead(make_agent, facility, client):
    facility.script("CNCS", timed_script(1.0))
    agent = make_agent(serialize_per_proposal=True, max_procs=4, jobs_per_instrument=0).start()
    for run in (1, 2, 3):
        client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", run))
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-2", 10))
    client.wait(agent.q("reduction_complete"), 4, timeout=30)
    out1 = facility.output_dir("CNCS", "IPTS-1")
    same = [dict(json.load(open(os.path.join(out1, n))), name=n) for n in os.listdir(out1) if n.endswith(".json")]
    assert len(same) == 3 and max_overlap(same) == 1
    out2 = facility.output_dir("CNCS", "IPTS-2")
    other = [json.load(open(os.path.join(out2, n))) for n in os.listdir(out2) if n.endswith(".json")]
    assert other[0]["start"] < sorted(r["end"] for r in same)[0], "the other proposal waited"
    in_start_order = [r["name"] for r in sorted(same, key=lambda r: r["start"])]
    sent_order = ["CNCS_%d.nxs.h5.json" % run for run in (1, 2, 3)]
    assert in_start_order == sent_order, "runs of one proposal start in the order they were sent"


def test_a_waiting_run_goes_back_to_the_broker_for_an_idle_agent(make_agent, facility, client):
    facility.script("CNCS", timed_script(6.0))
    busy = make_agent(name="busy", serialize_per_proposal=True, max_procs=2, max_wait_hold_sec=1).start()
    for run in (1, 2):
        client.send(busy.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", run))
    client.wait(busy.q("reduction_started"), 1)
    busy.wait_log("waited", timeout=10)
    idle = make_agent(name="idle", max_procs=2).start()
    client.wait(busy.q("reduction_complete"), 2, timeout=30)
    agents = {json.load(open(os.path.join(facility.output_dir("CNCS", "IPTS-1"), n)))["agent"].split(":")[0]
              for n in os.listdir(facility.output_dir("CNCS", "IPTS-1")) if n.endswith(".json")}
    assert agents == {str(busy.pid), str(idle.pid)}


# -- script variables ---------------------------------------------------------------------
def test_reduction_arguments_override_reduce_vars(make_agent, facility, client):
    facility.script("CNCS", """
        import json, sys
        import reduce_vars
        json.dump({"s": reduce_vars.standard_vars, "a": reduce_vars.advanced_vars, "h": reduce_vars.helper()},
                  open(sys.argv[2] + "used.json", "w"))
    """)
    facility.script("CNCS", """
        standard_vars = {"e_min": -1.0, "mask": "default", "keep": 1}
        advanced_vars = {"bins": 100}
        def helper():
            return "from the file"
    """, name="reduce_vars.py")
    agent = make_agent().start()
    overrides = {"standard_vars": {"e_min": -0.95, "mask": "__import__('os').system('touch /tmp/pwned')"},
                 "advanced_vars": {"bins": 250}}
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1, reduction_arguments=overrides))
    client.wait(agent.q("reduction_complete"))
    out = facility.output_dir("CNCS", "IPTS-1")
    used = json.load(open(os.path.join(out, "used.json")))
    assert used["s"] == {"e_min": -0.95, "mask": overrides["standard_vars"]["mask"], "keep": 1}
    assert used["a"] == {"bins": 250} and used["h"] == "from the file"
    record = json.load(open(os.path.join(out, "reduction_log", "CNCS_1.nxs.h5.vars.json")))
    assert record == {"standard_vars": used["s"], "advanced_vars": used["a"]}
    assert not os.path.exists("/tmp/pwned")


def test_bad_reduction_arguments_are_rejected(make_agent, facility, client):
    agent = make_agent().start()
    client.send(agent.q("reduction_data_ready"),
                facility.run("CNCS", "IPTS-1", 2, reduction_arguments={"standard_vars": ["x"]}))
    assert "must map names to values" in client.wait(agent.q("postprocess_error"))[0]["error"]


# -- staged output -------------------------------------------------------------------------
STAGED = """
import os, sys
out = sys.argv[2]
open(out + "result.txt", "w").write("new")
os.makedirs(out + "plots", exist_ok=True)
open(out + "plots/p.txt", "w").write("plot")
if "FAIL" in open(sys.argv[1]).read():
    raise RuntimeError("half way")
"""


def test_staged_output_moves_in_only_on_success(make_agent, facility, client):
    facility.script("CNCS", STAGED)
    out = facility.output_dir("CNCS", "IPTS-1")
    os.makedirs(out)
    open(os.path.join(out, "result.txt"), "w").write("old")
    agent = make_agent(stage_output=True).start()

    failing = facility.run("CNCS", "IPTS-1", 1)
    open(failing["data_file"], "w").write("FAIL")
    client.send(agent.q("reduction_data_ready"), failing)
    assert client.wait(agent.q("reduction_error"))[0]["error"] == "REDUCTION: half way"
    assert open(os.path.join(out, "result.txt")).read() == "old"
    assert not os.path.exists(os.path.join(out, "plots"))
    partial = [n for n in os.listdir(os.path.join(out, "reduction_log")) if ".partial-" in n]
    assert len(partial) == 1
    assert os.path.exists(os.path.join(out, "reduction_log", partial[0], "plots", "p.txt"))

    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 2))
    client.wait(agent.q("reduction_complete"))
    assert open(os.path.join(out, "result.txt")).read() == "new"
    assert open(os.path.join(out, "plots", "p.txt")).read() == "plot"
    assert not [n for n in os.listdir(out) if n.startswith(".staging-")]


def test_isis_style_main_script(make_agent, facility, client):
    copies = os.path.join(facility.root, "SNS", "CNCS", "IPTS-1", "copies")
    facility.script("CNCS", """
        import os

        def main(input_file, output_dir):
            with open(os.path.join(output_dir, "isis.txt"), "w") as out:
                out.write(input_file)
            return %r
    """ % copies)
    agent = make_agent(stage_output=True).start()
    msg = facility.run("CNCS", "IPTS-1", 3)
    client.send(agent.q("reduction_data_ready"), msg)
    client.wait(agent.q("reduction_complete"))
    assert open(os.path.join(facility.output_dir("CNCS", "IPTS-1"), "isis.txt")).read() == msg["data_file"]
    assert open(os.path.join(copies, "isis.txt")).read() == msg["data_file"]


def test_no_process_left_after_cancel(make_agent, facility, client):
    facility.script("CNCS", "import time\ntime.sleep(300)\n")
    agent = make_agent().start()
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 4))
    client.wait(agent.q("reduction_started"))
    time.sleep(0.5)
    assert agent.children()
    client.send(agent.q("reduction_cancel"), {"instrument": "CNCS", "run_number": "4", "cancel": True})
    client.wait(agent.q("reduction_error"))
    deadline = time.monotonic() + 5
    while agent.children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in agent.children() if p.status() != psutil.STATUS_ZOMBIE]

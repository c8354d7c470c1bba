"""The agent under real conditions: heartbeat, ping, concurrency, limits, kills and restarts."""

import json
import os
import re
import time

import psutil
import pytest

from tests.support.agentproc import wait_listening

pytestmark = pytest.mark.broker

TIMED_SCRIPT = """
import json, os, sys, time
start = time.time()
time.sleep(float(os.environ.get("SLEEP", "%s")))
with open(sys.argv[2] + os.path.basename(sys.argv[1]) + ".json", "w") as out:
    json.dump({"start": start, "end": time.time(), "agent": os.environ["POSTPROCESSING_AGENT_ID"]}, out)
"""


def timed_script(seconds: float) -> str:
    return TIMED_SCRIPT % seconds


def gone(pid: int, timeout: float = 5.0) -> bool:
    """Whether ``pid`` ends (or is a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def records(facility, inst, ipts):
    out = facility.output_dir(inst, ipts)
    return [json.load(open(os.path.join(out, name))) for name in sorted(os.listdir(out))
            if name.endswith(".json")]


def max_overlap(recs):
    events = sorted([(r["start"], 1) for r in recs] + [(r["end"], -1) for r in recs])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def test_heartbeat_on_start_and_during_long_jobs(make_agent, facility, client):
    facility.script("CNCS", timed_script(3.5))
    agent = make_agent(heartbeat_interval_sec=0.5).start()
    beats = client.wait(agent.q("heart_beat"), 1, timeout=10)
    assert beats[0] == {"src_name": os.uname().nodename, "role": "postprocessing", "status": "0",
                        "pid": str(agent.pid)}
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
    client.wait(agent.q("reduction_started"))
    before = client.total(agent.q("heart_beat"))
    time.sleep(2.5)
    assert client.total(agent.q("heart_beat")) - before >= 3, "heartbeats stopped while a job ran"
    client.wait(agent.q("reduction_complete"), timeout=20)


def test_ping_is_answered_on_reply_to(make_agent, client):
    agent = make_agent().start()
    wait_listening(client, agent)
    reply_to = agent.q("heartbeat_ping").replace("PING", "PONG")
    client.subscribe(reply_to)
    client.send(agent.q("heartbeat_ping"), {"reply_to": reply_to, "request_id": "abc"})
    reply = client.wait(reply_to)[0]
    assert reply["request_id"] == "abc" and "reply_to" not in reply
    assert reply["src_name"] == os.uname().nodename and reply["pid"] == str(agent.pid)
    assert reply["role"] == "postprocessing" and reply["status"] == "0"
    client.send(agent.q("heartbeat_ping"), {"reply_to": "not a destination"})
    client.send(agent.q("heartbeat_ping"), "garbage")
    time.sleep(0.5)
    assert len(client.get(reply_to)) == 1 and agent.proc.poll() is None


def test_eight_one_second_jobs_run_four_at_a_time(make_agent, facility, client):
    """Four slots are all used, and never more; how fast is bench/bench_agent.py's business."""
    facility.script("CNCS", timed_script(1.0))
    agent = make_agent(max_procs=4, jobs_per_instrument=0).start()
    for run in range(1, 9):
        client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", run))
    client.wait(agent.q("reduction_complete"), 8, timeout=60)
    recs = sorted(records(facility, "CNCS", "IPTS-1"), key=lambda r: r["start"])
    assert len(recs) == 8
    assert max_overlap(recs) == 4
    first_end = min(r["end"] for r in recs[:4])
    assert all(r["start"] >= first_end for r in recs[4:]), "a fifth job started before a slot was free"


def test_jobs_per_instrument_caps_without_blocking_others(make_agent, facility, client):
    facility.script("CNCS", timed_script(1.0))
    facility.script("ARCS", timed_script(1.0))
    agent = make_agent(max_procs=4, jobs_per_instrument=2).start()
    for run in range(1, 5):
        client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", run))
    for run in range(1, 3):
        client.send(agent.q("reduction_data_ready"), facility.run("ARCS", "IPTS-2", run))
    client.wait(agent.q("reduction_complete"), 6, timeout=30)
    assert max_overlap(records(facility, "CNCS", "IPTS-1")) == 2
    arcs = records(facility, "ARCS", "IPTS-2")
    cncs = records(facility, "CNCS", "IPTS-1")
    assert min(r["start"] for r in arcs) < sorted(r["end"] for r in cncs)[1], "ARCS waited behind CNCS"
    assert "NACK" not in agent.log()


def test_memory_limit_kills_the_whole_tree(make_agent, facility, client):
    facility.script("CNCS", """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "import time; block = bytearray(600 * 1024 * 1024); time.sleep(60)"])
        open(sys.argv[2] + "child.pid", "w").write(str(child.pid))
        time.sleep(60)
    """)
    limit_perc = 100.0 * 300 * 1024 * 1024 / psutil.virtual_memory().total
    agent = make_agent(system_mem_limit_perc=round(limit_perc, 3)).start()
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
    error = client.wait(agent.q("reduction_error"), timeout=30)[0]["error"]
    assert re.match(r"REDUCTION: Total memory usage exceeded limit \([0-9]+\.[0-9]{6} GiB > 0\.29[0-9]{4} GiB\)\. "
                    r"Terminating job\.", error), error
    child = int(open(os.path.join(facility.output_dir("CNCS", "IPTS-1"), "child.pid")).read())
    assert gone(child), "a process of the killed job is still running"


def test_time_limit_terms_then_kills(make_agent, facility, client):
    facility.script("CNCS", """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(120)
    """)
    agent = make_agent(task_time_limit_minutes=0.02, kill_grace_sec=1).start()
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
    t0 = time.monotonic()
    error = client.wait(agent.q("reduction_error"), timeout=30)[0]["error"]
    assert error == "REDUCTION: Time limit exceeded: ran longer than 0.02 minutes"
    assert time.monotonic() - t0 < 10
    assert not agent.children()


def test_admission_holds_jobs_while_overloaded(make_agent, facility, client):
    facility.script("CNCS", timed_script(0.1))
    busy = make_agent(name="busy", admission_min_free_mem_perc=99.99).start()
    client.send(busy.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
    busy.wait_log("node overloaded", timeout=10)
    time.sleep(1.5)
    assert not client.get(busy.q("reduction_started")), "a job started on an overloaded node"
    assert busy.stop() == 0
    healthy = make_agent(name="healthy").start()
    assert client.wait(healthy.q("reduction_complete"), timeout=20)[0]["run_number"] == "1"


def test_sigterm_finishes_running_jobs_and_leaves_the_rest(make_agent, facility, client):
    facility.script("CNCS", timed_script(2.0))
    agent = make_agent(max_procs=1).start()
    for run in (1, 2, 3):
        client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", run))
    client.wait(agent.q("reduction_started"))
    assert agent.stop() == 0
    done = client.get(agent.q("reduction_complete"))
    assert [m["run_number"] for m in done] == ["1"]
    assert len(client.get(agent.q("reduction_started"))) == 1
    second = make_agent(name="second", max_procs=2).start()
    client.wait(second.q("reduction_complete"), 3, timeout=30)
    assert sorted(m["run_number"] for m in client.get(second.q("reduction_complete"))) == ["1", "2", "3"]


def test_sigkill_mid_job_then_restart_completes_the_run(make_agent, facility, client):
    facility.script("CNCS", """
        import os, subprocess, sys, time
        marker = sys.argv[2] + "attempts"
        with open(marker, "a") as f:
            f.write("%d\\n" % os.getpid())
        grandchild = subprocess.Popen(["sleep", "300"])
        open(sys.argv[2] + "grandchild.%d" % os.getpid(), "w").write(str(grandchild.pid))
        time.sleep(3)
        grandchild.kill()
    """)
    agent = make_agent().start()
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
    client.wait(agent.q("reduction_started"))
    out = facility.output_dir("CNCS", "IPTS-1")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (
            os.path.isdir(out) and [n for n in os.listdir(out) if n.startswith("grandchild.")]):
        time.sleep(0.05)
    job_pid = int(open(os.path.join(out, "attempts")).read().split()[0])
    grandchild = int(open(os.path.join(out, "grandchild.%d" % job_pid)).read())
    agent.kill()
    assert gone(job_pid), "the job outlived its killed agent"

    restarted = make_agent(name="restarted").start()
    assert gone(grandchild), "the restarted agent did not reap the dead agent's job processes"
    complete = client.wait(restarted.q("reduction_complete"), timeout=30)
    assert [m["run_number"] for m in complete] == ["1"]
    assert len(open(os.path.join(out, "attempts")).read().split()) == 2


def test_two_agents_share_a_burst(make_agent, facility, client):
    facility.script("CNCS", timed_script(1.0))
    first = make_agent(name="first", max_procs=2, jobs_per_instrument=0).start()
    second = make_agent(name="second", max_procs=2, jobs_per_instrument=0).start()
    for run in range(1, 9):
        client.send(first.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", run))
    client.wait(first.q("reduction_complete"), 8, timeout=30)
    by_agent = {}
    for rec in records(facility, "CNCS", "IPTS-1"):
        by_agent.setdefault(rec["agent"].split(":")[0], []).append(rec)
    assert set(by_agent) == {str(first.pid), str(second.pid)}
    assert all(len(recs) == 4 for recs in by_agent.values()), {k: len(v) for k, v in by_agent.items()}
    assert len(client.get(first.q("reduction_started"))) == 8

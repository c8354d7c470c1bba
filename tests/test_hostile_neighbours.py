"""Issue 11, end to end: what a proposal's users, other broker users and message senders
can do to the agent, tried through a real broker against a real agent process."""

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from postprocessing.agent import ping
from postprocessing.jobs import identity
from tests.support.agentproc import wait_listening
from tests.support.cli import broker_config, run_cli, write_config
from tests.support.stallserver import StallServer

pytestmark = pytest.mark.broker

OK_SCRIPT = """
import sys
with open(sys.argv[2] + "reduced.txt", "w") as handle:
    handle.write(sys.argv[1])
"""


def test_failed_spawns_leak_no_fds_and_name_the_interpreter(make_agent, facility, client):
    facility.script("CNCS", OK_SCRIPT)
    missing = "/nonexistent/bin/python3-missing"
    agent = make_agent(python_exec=missing).start()
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
    first = client.wait(agent.q("reduction_error"))[0]
    assert missing in first["error"], first
    before = psutil.Process(agent.pid).num_fds()
    for run in range(2, 32):
        client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", run))
    client.wait(agent.q("reduction_error"), count=31, timeout=60)
    after = psutil.Process(agent.pid).num_fds()
    assert after - before < 5, "open fds went from %d to %d over 30 failed spawns" % (before, after)


def test_a_newline_in_a_message_value_forges_no_log_line(make_agent, facility, client):
    agent = make_agent().start()
    forged = "FORGED 2026-01-01 00:00:00 ERROR the agent is compromised"
    body = facility.run("CNCS", "IPTS-1", 7)
    body["data_file"] = os.path.join(facility.root, "SNS", "CNCS", "IPTS-1", "nexus", "x.nxs.h5\n" + forged)
    client.send(agent.q("reduction_data_ready"), body)
    client.wait(agent.q("postprocess_error"))
    body = {"instrument": "CNCS\r\n" + forged, "ipts": "IPTS-1", "run_number": "1"}
    client.send(agent.q("reduction_data_ready"), body)
    client.wait(agent.q("postprocess_error"), count=2)
    log = agent.log()
    assert "x.nxs.h5\\n" + forged in log
    assert not [line for line in log.splitlines() if line.startswith("FORGED")]


def test_a_ping_answered_on_the_ping_topic_does_not_multiply(make_agent, client):
    first = make_agent("first").start()
    second = make_agent("second").start()
    wait_listening(client, first, second)
    ping_topic = first.q("heartbeat_ping")
    client.subscribe(ping_topic)
    client.send(ping_topic, {"reply_to": ping_topic, "ping_id": "loop"})
    time.sleep(3)
    assert client.total(ping_topic) == 1, "%d messages on the ping topic" % client.total(ping_topic)
    first.wait_log("is one of the agent's own destinations")
    assert first.log().count("not answered") == 1


def test_a_ping_cannot_inject_a_run_request(make_agent, client):
    agent = make_agent().start()
    wait_listening(client, agent)
    run_queue = agent.q("reduction_data_ready")
    client.send(agent.q("heartbeat_ping"), {"reply_to": run_queue, "instrument": "CNCS", "ipts": "IPTS-1",
                                           "run_number": "1", "data_file": "/etc/passwd"})
    client.send(agent.q("heartbeat_ping"), {"reply_to": run_queue.replace("/queue/", "/amq/queue/")})
    time.sleep(2)
    injected = client.get(agent.q("postprocess_error")) + client.get(agent.q("reduction_started"))
    assert injected == [], agent.tail()
    assert "rejected message" not in agent.log(), agent.tail()
    agent.wait_log("not answered")


def test_ping_answers_are_rate_limited_and_carry_no_reply_to(make_agent, client):
    agent = make_agent().start()
    wait_listening(client, agent)
    reply_to = agent.q("heartbeat_ping").replace("PING", "PONG")
    client.subscribe(reply_to)
    for n in range(60):
        client.send(agent.q("heartbeat_ping"), {"reply_to": reply_to, "n": n})
    client.wait(reply_to, count=ping.MAX_BURST)
    time.sleep(1)
    replies = client.get(reply_to)
    assert len(replies) < 60, "every one of 60 pings was answered"
    assert all("reply_to" not in reply for reply in replies)
    agent.wait_log("more than %g pings a second" % ping.RATE_PER_SEC)


# -- the proposal's shared area ------------------------------------------------------------
HELPER_SCRIPT = """
import json, os, sys
import reduce_helper
import reduce_vars
info = {"helper": reduce_helper.VALUE, "vars_dir": os.path.dirname(reduce_vars.__file__),
        "vars_mode": os.stat(os.path.dirname(reduce_vars.__file__)).st_mode & 0o777}
with open(sys.argv[2] + "helper.json", "w") as handle:
    json.dump(info, handle)
"""


def test_code_planted_in_the_proposal_area_is_not_run(make_agent, facility, client, tmp_path):
    facility.script("CNCS", HELPER_SCRIPT)
    facility.script("CNCS", "VALUE = 'instrument'\n", name="reduce_helper.py")
    log_dir = os.path.join(facility.output_dir("CNCS", "IPTS-1"), "reduction_log")
    os.makedirs(log_dir)
    marker = str(tmp_path / "planted-code-ran")
    for name in ("reduce_helper.py", "reduce_vars.py", "json.py"):
        with open(os.path.join(log_dir, name), "w") as handle:
            handle.write("open(%r, 'a').write(%r)\nVALUE = 'planted'\n" % (marker, name))
    agent = make_agent().start()
    client.send(agent.q("reduction_data_ready"),
                facility.run("CNCS", "IPTS-1", 1, reduction_arguments={"standard_vars": {"a": 1}}))
    client.wait(agent.q("reduction_complete"))
    assert not os.path.exists(marker), open(marker).read()
    info = json.load(open(os.path.join(facility.output_dir("CNCS", "IPTS-1"), "helper.json")))
    assert info["helper"] == "instrument"
    assert info["vars_mode"] == 0o700 and not os.path.exists(info["vars_dir"])
    assert not info["vars_dir"].startswith(facility.root)
    record = json.load(open(os.path.join(log_dir, "CNCS_1.nxs.h5.vars.json")))
    assert record["standard_vars"] == {"a": 1}
    # the run's claim (docs/delivery.md): released once its outcome is confirmed, settled once its ACK is;
    # the client can see the outcome before the agent has its receipt, so wait for the claim to settle
    settled = os.path.join(log_dir, "CNCS_1.nxs.h5.reduction.lease.settled")
    deadline = time.monotonic() + 30
    while not os.path.exists(settled):
        assert time.monotonic() < deadline, sorted(os.listdir(log_dir))
        time.sleep(0.05)
    claims = (".lease", ".done", ".settled")
    assert sorted(n for n in os.listdir(log_dir) if not n.endswith(claims)) == [
        "CNCS_1.nxs.h5.log", "CNCS_1.nxs.h5.vars.json", "json.py", "reduce_helper.py", "reduce_vars.py"]


def plant_link(link: str, target: str, owner: int = 0) -> None:
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.makedirs(target, exist_ok=True)
    os.symlink(target, link)
    os.lchown(link, owner, owner)


@pytest.mark.parametrize("where", ["reduction_log owned by a user", "autoreduce in a writable shared"])
def test_a_planted_symlink_does_not_redirect_writes(make_agent, facility, client, tmp_path, where):
    if os.geteuid() != 0:
        pytest.fail("this test plants links owned by another user: it needs root")
    facility.script("CNCS", OK_SCRIPT)
    outside = str(tmp_path / "outside")
    out_dir = facility.output_dir("CNCS", "IPTS-1")
    if where.startswith("reduction_log"):
        link = os.path.join(out_dir, "reduction_log")
        plant_link(link, outside, owner=65534)
    else:
        link = out_dir
        plant_link(link, outside)
        os.chmod(os.path.dirname(link), 0o1777)
    agent = make_agent().start()
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
    error = client.wait(agent.q("reduction_error"))[0]
    assert link in error["error"] and "symbolic link" in error["error"], error
    assert os.listdir(outside) == []


@pytest.mark.parametrize("linked", ["instrument", "proposal"])
def test_links_the_facility_made_are_followed(make_agent, facility, client, tmp_path, linked):
    facility.script("CNCS", OK_SCRIPT)
    msg = facility.run("CNCS", "IPTS-1", 1)
    inst = os.path.join(facility.root, "SNS", "CNCS")
    moved = os.path.join(inst, "IPTS-1") if linked == "proposal" else inst
    real = str(tmp_path / "elsewhere" / linked)
    os.makedirs(os.path.dirname(real))
    os.rename(moved, real)
    os.symlink(real, moved)
    agent = make_agent().start()
    client.send(agent.q("reduction_data_ready"), msg)
    client.wait(agent.q("reduction_complete"))
    assert open(os.path.join(facility.output_dir("CNCS", "IPTS-1"), "reduced.txt")).read() == msg["data_file"]


# -- CREATE_SCRIPT ---------------------------------------------------------------------------
@pytest.fixture
def script_agent(make_agent, facility, client):
    """Start an agent with a CNCS template; the client hears the CNCS status topic."""
    facility.script("CNCS", "mask = $mask\nx = '$x'\n# postprocessing: multiline mask\n",
                    name="reduce_CNCS.py.template")

    def start(**overrides):
        agent = make_agent(**overrides)
        agent.status = agent.q("service_status").replace("${instrument}", "CNCS")
        client.subscribe(agent.status)
        return agent.start()
    return start


def script_request(**values):
    return {"instrument": "CNCS", "use_default": False, "template_data": values}


def test_create_script_is_refused_from_a_user_not_configured(script_agent, facility, client):
    agent = script_agent(create_script_users=["webmon"])
    client.send_vouched(agent.q("create_reduction_script"), script_request(mask="1", x="2"))
    status = client.wait(agent.status)[0]["status"]
    assert status == ("Error creating CNCS reduction script: request refused: broker user %s is not in "
                      "create_script_users" % client.user)
    assert not os.path.exists(os.path.join(facility.instrument_dir("CNCS"), "reduce_CNCS.py"))


def test_a_forged_validated_user_header_is_refused(script_agent, facility, client):
    agent = script_agent(create_script_users=["webmon"])
    forged = {"JMSXUserID": "webmon", "_AMQ_VALIDATED_USER": "webmon"}
    client.send(agent.q("create_reduction_script"), script_request(mask="1", x="2"), headers=forged)
    status = client.wait(agent.status)[0]["status"]
    assert status.startswith("Error creating CNCS reduction script: request refused: ")
    assert "webmon" not in status.split("refused: ")[1].split(" is not")[0]
    assert not os.path.exists(os.path.join(facility.instrument_dir("CNCS"), "reduce_CNCS.py"))


def test_a_line_break_is_refused_unless_the_template_marks_the_key(script_agent, facility, client):
    agent = script_agent(create_script_users=["webmon", client.user])
    client.send_vouched(agent.q("create_reduction_script"),
                        script_request(mask="1", x="2'\nimport os\nos.system('id')\nx='"))
    status = client.wait(agent.status)[0]["status"]
    assert status == ("Error creating CNCS reduction script: the value of x has a line break, and the "
                      "template does not mark x as multi-line")
    script = os.path.join(facility.instrument_dir("CNCS"), "reduce_CNCS.py")
    assert not os.path.exists(script)
    client.send_vouched(agent.q("create_reduction_script"), script_request(mask="[1,\n 2]", x="2"))
    assert client.wait(agent.status, count=2)[1]["status"] == "Created CNCS reduction script"
    assert open(script).read() == "mask = [1,\n 2]\nx = '2'\n# postprocessing: multiline mask\n"


# -- which process is the agent ---------------------------------------------------------------
def test_stop_does_not_signal_a_reused_pid_with_an_agent_like_command_line(broker, tmp_path):
    pid_file = str(tmp_path / "pp.pid")
    path = write_config(str(tmp_path / "pp.conf"), broker_config(broker, pid_file=pid_file,
                                                                 log_file=str(tmp_path / "pp.log")))
    impostor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "postprocessing"])
    try:
        with open(pid_file, "w") as handle:
            handle.write("%d\n" % impostor.pid)
        earlier = identity.identity(impostor.pid).rsplit(":", 1)[0] + ":1"
        with open(pid_file + ".id", "w") as handle:
            handle.write(earlier + "\n")
        status = run_cli(path, "status")
        assert status.returncode == 1, status.stdout
        stop = run_cli(path, "stop")
        assert stop.returncode == 0 and "not running" in stop.stdout, stop.stdout + stop.stderr
        time.sleep(0.2)
        assert impostor.poll() is None, "stop signalled a process that only looks like the agent"
        assert not os.path.exists(pid_file) and not os.path.exists(pid_file + ".id")
    finally:
        impostor.kill()
        impostor.wait()


# -- in-process jobs: time limit and cancellation -----------------------------------------------
@pytest.fixture
def stalled_oncat():
    server = StallServer()
    yield server
    server.stop()


def catalog_agent(make_agent, client, oncat_url, **overrides):
    agent = make_agent(oncat_url=oncat_url, oncat_api_token="t", oncat_timeout_sec=1, **overrides)
    client.subscribe(agent.q("catalog_started"), agent.q("catalog_error"), agent.q("catalog_complete"))
    return agent.start()


def test_a_stalled_oncat_job_ends_at_the_time_limit(make_agent, facility, client, stalled_oncat):
    agent = catalog_agent(make_agent, client, stalled_oncat.url, task_time_limit_minutes=0.05)
    client.send(agent.q("catalog_data_ready"), facility.run("CNCS", "IPTS-1", 100))
    error = client.wait(agent.q("catalog_error"), timeout=30)[0]
    assert error["error"] == "ONCAT: Time limit exceeded: ran longer than 0.05 minutes"
    assert stalled_oncat.requests == 1
    client.send(agent.q("catalog_data_ready"), facility.run("CNCS", "IPTS-1", 101))
    client.wait(agent.q("catalog_started"), count=2)
    assert agent.stop(timeout=30) == 0
    assert client.total(agent.q("catalog_error")) == 2


def test_a_stalled_oncat_job_can_be_cancelled(make_agent, facility, client, stalled_oncat):
    agent = catalog_agent(make_agent, client, stalled_oncat.url)
    client.send(agent.q("catalog_data_ready"), facility.run("CNCS", "IPTS-1", 100))
    client.wait(agent.q("catalog_started"))
    client.send(agent.q("reduction_cancel"), {"cancel": True, "instrument": "CNCS", "run_number": "100",
                                              "information": "alice"})
    error = client.wait(agent.q("catalog_error"), timeout=30)[0]
    assert error["error"] == "ONCAT: cancelled" and error["cancelled_by"] == "alice"
    assert agent.stop(timeout=30) == 0

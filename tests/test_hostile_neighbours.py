"""Issue 11, end to end: what a proposal's users, other broker users and message senders
can do to the agent, tried through a real broker against a real agent process."""

import os
import time

import psutil
import pytest

from postprocessing.agent import ping

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
    make_agent("second").start()
    ping_topic = first.q("heartbeat_ping")
    client.subscribe(ping_topic)
    client.send(ping_topic, {"reply_to": ping_topic, "ping_id": "loop"})
    time.sleep(3)
    assert client.total(ping_topic) == 1, "%d messages on the ping topic" % client.total(ping_topic)
    first.wait_log("is one of the agent's own destinations")
    assert first.log().count("not answered") == 1


def test_a_ping_cannot_inject_a_run_request(make_agent, client):
    agent = make_agent().start()
    run_queue = agent.q("reduction_data_ready")
    client.send(agent.q("heartbeat_ping"), {"reply_to": run_queue, "instrument": "CNCS", "ipts": "IPTS-1",
                                           "run_number": "1", "data_file": "/etc/passwd"})
    client.send(agent.q("heartbeat_ping"), {"reply_to": run_queue.replace("/queue/", "/amq/queue/")})
    time.sleep(2)
    assert client.total(agent.q("postprocess_error"), agent.q("reduction_started")) == 0
    assert "rejected message" not in agent.log()
    agent.wait_log("not answered")


def test_ping_answers_are_rate_limited_and_carry_no_reply_to(make_agent, client):
    agent = make_agent().start()
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

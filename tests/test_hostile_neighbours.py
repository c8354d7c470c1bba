"""Issue 11, end to end: what a proposal's users, other broker users and message senders
can do to the agent, tried through a real broker against a real agent process."""

import os

import psutil
import pytest

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

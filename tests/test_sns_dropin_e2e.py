"""An SNS node swapped to our agent, end to end: SNS's own configs, mantidpython.py, the test processor."""

import json
import os
import re
import socket
import stat
import sys

import pytest

from tests.support.agentproc import ROOT, AgentProcess
from tests.support.sns import FILES, sns_config

pytestmark = pytest.mark.broker


def adapt(data, broker, tmp_path):
    """Only host names, ports and paths change (and the broker account, which the test broker sets).

    ``broker_type`` stays unset, as in SNS's files: the agent reads the broker's kind from it."""
    out = dict(data)
    where = "127.0.0.1:%d" % broker.port
    if "brokers" in out:
        out["brokers"] = [["127.0.0.1", broker.port]]
    if "failover_uri" in out:
        for host, port in [tuple(b) for b in data.get("brokers", [])] + [("amqbroker.sns.gov", 61613)]:
            out["failover_uri"] = out["failover_uri"].replace("%s:%d" % (host, port), where)
    out.update(amq_user=broker.user, amq_pwd=broker.password)
    out["log_file"] = str(tmp_path / "sns" / os.path.basename(data["log_file"]))
    return out


@pytest.mark.parametrize("name", FILES)
def test_sns_config_starts_an_agent_that_heartbeats(broker, client, tmp_path, name):
    data = adapt(sns_config(name), broker, tmp_path)
    agent = AgentProcess(str(tmp_path), data, name="sns")
    client.subscribe(data["heart_beat"])
    agent.start(["--allow-root"])
    try:
        deadline_beats = client.wait(data["heart_beat"], timeout=30)
        mine = [b for b in client.get(data["heart_beat"]) if b.get("pid") == str(agent.pid)]
        assert deadline_beats and mine, client.get(data["heart_beat"])
        assert mine[0]["src_name"] == socket.gethostname() and mine[0]["role"] == "postprocessing"
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0


def test_test_processor_answers_started_and_complete(make_agent, facility, client):
    agent = make_agent(processors=["test_processor.TestProcessor"], test_data_ready="T%d.TESTPROCESSOR" % os.getpid())
    agent.start()
    msg = facility.run("CNCS", "IPTS-1", 9)
    client.send(agent.q("test_data_ready"), msg)
    done = client.wait(agent.q("reduction_complete"))[0]
    assert done == dict(msg, information=socket.gethostname())
    assert client.get(agent.q("reduction_started"))[0]["run_number"] == "9"


RECORDING_SCRIPT = """{conda}
import json, os, sys
record = {{"argv": sys.argv[1:], "cwd": os.getcwd(),
          "env": {{k: v for k, v in os.environ.items() if not k.startswith("POSTPROCESSING_AGENT")}}}}
with open(sys.argv[2] + "run.json", "w") as handle:
    json.dump(record, handle)
print("reduced")
"""


def test_python_exec_mantidpython_behaves_as_python3(make_agent, facility, client, tmp_path, monkeypatch):
    """SNS configs set python_exec to /opt/postprocessing/scripts/mantidpython.py; the RPM ships it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "nsd-conda-wrap.sh"
    wrapper.write_text('#!/bin/sh\necho "$@" >> %s/wrapped\nshift; shift\nexec python3 "$@"\n' % tmp_path)
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    with open(os.path.join(ROOT, "postprocessing", "jobs", "mantidpython.py"), encoding="utf-8") as handle:
        shipped = handle.read()
    launcher = tmp_path / "mantidpython.py"
    launcher.write_text(shipped.replace("#!/usr/bin/python3", "#!" + sys.executable, 1))
    launcher.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (bindir, os.environ["PATH"]))
    facility.script("CNCS", RECORDING_SCRIPT.format(conda="if True:\n    CONDA_ENV = 'sasview'"))
    facility.script("ARCS", RECORDING_SCRIPT.format(conda=""))

    seen = {}
    for n, python_exec in enumerate(("python3", str(launcher))):
        agent = make_agent("agent%d" % n, python_exec=python_exec).start()
        for inst in ("CNCS", "ARCS"):
            client.send(agent.q("reduction_data_ready"), facility.run(inst, "IPTS-1", 10 + n))
        done = client.wait(agent.q("reduction_complete"), count=2 * (n + 1), timeout=20)
        assert agent.stop() == 0
        for inst in ("CNCS", "ARCS"):
            out_dir = facility.output_dir(inst, "IPTS-1")
            with open(os.path.join(out_dir, "run.json"), encoding="utf-8") as handle:
                record = json.load(handle)
            record["argv"][0] = os.path.basename(record["argv"][0]).replace("_%d." % (10 + n), ".")
            # each agent has its own helper directory for postprocessing.script
            record["env"]["PYTHONPATH"] = re.sub(r"postprocessing-scriptlib-[^/:]+", "X", record["env"]["PYTHONPATH"])
            with open(os.path.join(out_dir, "reduction_log", "%s_%d.nxs.h5.log" % (inst, 10 + n))) as handle:
                record["stdout"] = handle.read()
            seen[(python_exec == "python3", inst)] = record
        assert sorted(d["instrument"] for d in done[-2:]) == ["ARCS", "CNCS"]
        assert not client.get(agent.q("reduction_error"))
    for inst in ("CNCS", "ARCS"):
        assert seen[(True, inst)] == seen[(False, inst)], inst
    assert seen[(True, "CNCS")]["stdout"] == "reduced\n"
    wrapped = (tmp_path / "wrapped").read_text().splitlines()
    assert len(wrapped) == 2 and all(line.startswith("sasview --classic ") for line in wrapped)

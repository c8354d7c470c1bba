"""Security: secrets stay secret, root needs a yes, symlinks are not followed, umask holds."""

import json
import os
import stat
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import collector
from tests.support.agentproc import ROOT

pytestmark = [pytest.mark.broker, pytest.mark.fire]

PASSWORD = "Pw-7f3a9-broker-secret"
TOKEN = "Tok-93kd-oncat-secret"

LEAKY_SCRIPT = """
import json, os, sys, time
me = psutil_free = None
with open("/proc/self/cmdline", "rb") as f:
    mine = f.read().decode()
with open("/proc/%d/cmdline" % os.getppid(), "rb") as f:
    parent = f.read().decode()
json.dump({"env": dict(os.environ), "cmdline": mine, "parent": parent}, open(sys.argv[2] + "seen.json", "w"))
time.sleep(1)
"""


def test_credentials_never_leak(make_agent, facility, private_broker, reliability_rows):
    broker = private_broker(password=PASSWORD)
    try:
        facility.script("CNCS", LEAKY_SCRIPT)
        agent = make_agent(on=broker, oncat_api_token=TOKEN, oncat_url="http://127.0.0.1:9", log_level="DEBUG")
        agent.start()
        watcher = collector(broker)
        keys = ("reduction_started", "reduction_complete", "reduction_error", "postprocess_error",
                "catalog_error", "catalog_started")
        watcher.subscribe(*(agent.q(k) for k in keys))
        watcher.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
        time.sleep(0.3)
        job_cmdlines = []
        deadline = time.monotonic() + 10
        while not job_cmdlines and time.monotonic() < deadline:
            job_cmdlines = [" ".join(p.cmdline()) for p in agent.children()]
            time.sleep(0.05)
        watcher.send(agent.q("reduction_data_ready"), {"instrument": "CNCS", "secret_probe": PASSWORD[:3]})
        watcher.send(agent.q("catalog_data_ready"), facility.run("CNCS", "IPTS-1", 2))
        watcher.wait(agent.q("reduction_complete"), timeout=30)
        watcher.wait(agent.q("postprocess_error"), timeout=30)
        watcher.wait(agent.q("catalog_error"), timeout=60)
        agent_cmdline = " ".join(psutil.Process(agent.pid).cmdline())
        assert agent.stop() == 0
        seen = json.load(open(os.path.join(facility.output_dir("CNCS", "IPTS-1"), "seen.json")))
        outcomes = json.dumps({k: watcher.get(agent.q(k)) for k in keys})
        places = {
            "agent log": agent.log(), "agent stderr": open(agent.stderr_path).read(),
            "agent cmdline": agent_cmdline, "job cmdlines": " ".join(job_cmdlines),
            "job environment": json.dumps(seen), "outcome bodies": outcomes,
        }
        for secret in (PASSWORD, TOKEN):
            leaks = [where for where, text in places.items() if secret in text]
            assert not leaks, "%s leaked into %s" % (secret[:6], leaks)
        assert job_cmdlines and seen["env"].get("POSTPROCESSING_AGENT_ID")
        assert "ONCAT:" in watcher.get(agent.q("catalog_error"))[0]["error"]
        reliability_rows.record(
            "credentials" + ("" if broker.kind == "activemq" else "_" + broker.kind),
            "broker password and ONCat token set; a reduction, a malformed run and a failing ONCat ingest, "
            "log level DEBUG",
            "neither secret in the agent log, stderr, agent or job command lines, job environment or "
            "%d outcome bodies" % sum(len(watcher.get(agent.q(k))) for k in keys))
        watcher.close()
    finally:
        broker.kill()


def test_root_needs_an_explicit_yes(make_agent):
    if os.geteuid() != 0:
        pytest.skip("the check is about running as root; this test runs as another user")
    agent = make_agent(allow_root=False)
    result = subprocess.run([sys.executable, "-m", "postprocessing", "--config", agent.config_path, "run"],
                            capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 2 and "refusing to run as root" in result.stderr
    agent.start(extra_args=["--allow-root"])
    assert agent.stop() == 0


def test_symlinks_planted_at_targets_are_not_followed(make_agent, facility, client, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    facility.script("CNCS", "print('reduced')\n")
    log_dir = os.path.join(facility.output_dir("CNCS", "IPTS-1"), "reduction_log")
    os.makedirs(log_dir)
    os.symlink(str(victim), os.path.join(log_dir, "CNCS_1.nxs.h5.log"))
    inst_dir = facility.instrument_dir("ARCS")
    os.makedirs(inst_dir)
    open(os.path.join(inst_dir, "reduce_ARCS.py.template"), "w").write("x = $x\n")
    os.symlink(str(victim), os.path.join(inst_dir, "reduce_ARCS.py"))
    agent = make_agent(create_script_users=[client.user])
    status = agent.config["service_status"].replace("${instrument}", "ARCS")
    client.subscribe(status)
    agent.start()
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
    error = client.wait(agent.q("reduction_error"))[0]["error"]
    assert "refusing to write through a symbolic link" in error
    client.send_vouched(agent.q("create_reduction_script"), {"instrument": "ARCS", "use_default": False,
                                                     "template_data": {"x": "1"}})
    assert "refusing to replace a symbolic link" in client.wait(status)[0]["status"]
    assert victim.read_text() == "precious"


def test_umask_applies_to_written_files(make_agent, facility, client):
    facility.script("CNCS", "import sys\nopen(sys.argv[2] + 'out.txt', 'w').write('x')\n")
    agent = make_agent(umask="027").start()
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
    client.wait(agent.q("reduction_complete"))
    out = facility.output_dir("CNCS", "IPTS-1")
    for path in (os.path.join(out, "out.txt"), os.path.join(out, "reduction_log", "CNCS_1.nxs.h5.log"),
                 agent.config["log_file"]):
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o027 == 0, path

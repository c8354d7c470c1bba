"""docker-compose.yml without a Docker engine: services, ports, mounts, and the files they use.

The parts that run without Docker are run for real: the agent's config loads, the demo
reduction script reduces the demo runs, and the ONCat launcher serves the stand-in.
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import pytest
import yaml

from postprocessing import config as config_mod
from postprocessing.devtools import artemis
from postprocessing.devtools.brokerproc import free_port
from tests.support.agentproc import ROOT

COMPOSE = os.path.join(ROOT, "docker-compose.yml")


@pytest.fixture(scope="module")
def compose():
    with open(COMPOSE, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def mounts(service):
    """(host path, container path, options) of the bind mounts; named volumes have no '/'."""
    out = []
    for volume in service.get("volumes", []):
        parts = volume.split(":")
        out.append((parts[0], parts[1], parts[2] if len(parts) > 2 else ""))
    return out


def host_path(path):
    return os.path.normpath(os.path.join(ROOT, path))


def test_services_and_ports(compose):
    services = compose["services"]
    assert set(services) == {"broker", "agent", "oncat"}
    broker = services["broker"]
    assert broker["image"].startswith("apache/activemq-artemis:")
    assert {"61613:61613", "8161:8161"} <= set(broker["ports"])
    assert broker["environment"] == {"ARTEMIS_USER": "icat", "ARTEMIS_PASSWORD": "icat"}
    agent = services["agent"]
    assert agent["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert set(agent["depends_on"]) == {"broker", "oncat"}
    assert agent["ports"] == ["9100:9100"]
    assert services["oncat"]["ports"] == ["8000:8000"]
    named = {source for service in services.values() for source, _, _ in mounts(service) if "/" not in source}
    assert named <= set(compose.get("volumes") or {})


def test_every_mounted_file_exists(compose):
    for name, service in compose["services"].items():
        for source, target, options in mounts(service):
            if "/" not in source:
                continue
            assert source.startswith("./"), (name, source)
            assert os.path.exists(host_path(source)), "%s mounts missing %s" % (name, source)
            assert target.startswith("/")
            assert options in ("", "ro", "rw")
    assert os.path.isfile(os.path.join(ROOT, "Dockerfile"))
    for line in open(os.path.join(ROOT, "Dockerfile")):
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert os.path.exists(os.path.join(ROOT, source)), source


def with_defaults(text):
    """broker.xml as the image runs it: every ``${property:default}`` replaced by its default."""
    return re.sub(r"\$\{[^}:]+:([^}]*)\}", r"\1", text)


def test_broker_config_maps_queue_and_topic_prefixes(compose):
    [(source, target, _)] = mounts(compose["services"]["broker"])
    assert target == "/var/lib/artemis-instance/etc-override/broker.xml"
    assert os.path.samefile(host_path(source), artemis.BROKER_XML), "compose runs the file the tests run"
    ns = {"c": "urn:activemq:core"}
    with open(host_path(source), encoding="utf-8") as handle:
        core = ET.fromstring(with_defaults(handle.read())).find("c:core", ns)
    acceptors = {a.get("name"): a.text for a in core.findall("c:acceptors/c:acceptor", ns)}
    stomp = acceptors["stomp"]
    assert stomp.startswith("tcp://0.0.0.0:61613?")
    params = dict(p.split("=", 1) for p in stomp.split("?", 1)[1].split(";"))
    assert params["protocols"] == "STOMP"
    assert params["anycastPrefix"] == "/queue/" and params["multicastPrefix"] == "/topic/"
    roles = {p.get("roles") for p in core.findall("c:security-settings/c:security-setting/c:permission", ns)}
    assert roles == {"amq"}, "artemis create gives ARTEMIS_USER the role amq"
    assert core.find("c:address-settings/c:address-setting/c:dead-letter-address", ns).text == "DLQ"
    assert core.find("c:address-settings/c:address-setting/c:default-address-routing-type", ns).text == "ANYCAST"
    assert core.find("c:populate-validated-user", ns).text == "true"
    assert core.find("c:ha-policy/c:shared-store/c:primary", ns) is not None


def test_agent_config_matches_the_stack(compose):
    agent = compose["services"]["agent"]
    by_target = {target: source for source, target, _ in mounts(agent)}
    cfg, notes = config_mod.load(host_path(by_target["/etc/autoreduce/post_processing.conf"]))
    assert notes == []
    assert cfg.brokers == (("broker", 61613),)
    assert (cfg.amq_user, cfg.amq_pwd) == ("icat", "icat")
    assert cfg.data_root == "/data" and by_target["/data"] == "./docker/demo"
    assert cfg.dev_output_dir == "/output" and by_target["/output"] == "reduced"
    assert cfg.dead_letter_queue == "DLQ"
    assert "%d:%d" % (cfg.metrics_port, cfg.metrics_port) in agent["ports"]
    oncat = compose["services"]["oncat"]
    command = oncat["command"]
    assert cfg.oncat_url == "http://oncat:%s" % command[command.index("--port") + 1]
    assert cfg.oncat_api_token == command[command.index("--token") + 1]
    oncat_mounts = {target: source for source, target, _ in mounts(oncat)}
    assert oncat_mounts["/app/oncat_server.py"] == "./tests/oncat_server.py"
    assert oncat_mounts["/data"] == "./docker/demo"
    assert "CMD [\"postprocessing\", \"run\"]" in open(os.path.join(ROOT, "Dockerfile")).read()


def test_demo_tree_reduces(tmp_path):
    demo = os.path.join(ROOT, "docker", "demo", "SNS", "CNCS")
    script = os.path.join(demo, "shared", "autoreduce", "reduce_CNCS.py")
    for run in (100, 101):
        data = os.path.join(demo, "IPTS-1234", "nexus", "CNCS_%d.nxs.h5" % run)
        proc = subprocess.run([sys.executable, script, data, str(tmp_path) + "/"], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "data file: %s" % data in (tmp_path / ("CNCS_%d_summary.txt" % run)).read_text()


def test_oncat_launcher_serves_the_standin(tmp_path):
    port = free_port()
    demo = os.path.join(ROOT, "docker", "demo")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tests"))
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "docker", "oncat_standin.py"), "--data-root", demo,
                             "--token", "demo-token", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        path = os.path.join(demo, "SNS", "CNCS", "IPTS-1234", "nexus", "CNCS_100.nxs.h5")
        url = "http://127.0.0.1:%d/api/datafiles%s/ingest" % (port, path)
        deadline = time.monotonic() + 30
        while True:
            request = urllib.request.Request(url, data=b"{}", method="POST",
                                             headers={"Authorization": "Bearer demo-token"})
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    answer = json.loads(response.read().decode("utf-8"))
                break
            except (ConnectionError, urllib.error.URLError):
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.1)
        assert answer["instrument"] == "CNCS" and answer["experiment"] == "IPTS-1234"
        assert answer["indexed"]["run_number"] == 100
    finally:
        proc.terminate()
        proc.wait(timeout=10)

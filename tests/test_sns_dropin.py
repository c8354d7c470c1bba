"""SNS's own configuration files load unchanged and mean at our agent what they mean at SNS."""

import os
import subprocess
import sys

import pytest

from postprocessing import config, processors
from postprocessing.errors import ConfigError
from postprocessing.jobs import mantidpython
from tests.support.agentproc import ROOT
from tests.support.sns import FILES, sns_config, sns_file


@pytest.mark.parametrize("name", FILES)
def test_sns_file_loads_unchanged(name):
    cfg, notes = config.load(sns_file(name))
    data = sns_config(name)
    if "brokers" in data:
        assert cfg.brokers == tuple((host, port) for host, port in data["brokers"])
    else:
        assert cfg.brokers == (("amqbroker.sns.gov", 61613),), "taken from failover_uri"
    assert cfg.max_procs == data["max_procs"]
    assert cfg.exceptions == tuple(data.get("exceptions", ["Error in logging framework"]))
    assert not [n for n in notes if "unknown" in n], notes
    built = processors.build(cfg, "host")
    assert len(built) == len(cfg.processors) == len(set(data.get("processors", ())) or config.DEFAULT_PROCESSORS)


def test_failover_uri_gives_the_brokers_when_brokers_is_absent():
    uri = "failover:(tcp://a.example:61613,tcp://b.example:61614)?randomize=false,maxReconnectAttempts=-1"
    cfg, notes = config.from_mapping({"failover_uri": uri})
    assert cfg.brokers == (("a.example", 61613), ("b.example", 61614))
    cfg, _ = config.from_mapping({"failover_uri": uri, "brokers": [["c.example", 1]]})
    assert cfg.brokers == (("c.example", 1),)
    with pytest.raises(ConfigError) as err:
        config.from_mapping({"failover_uri": "failover:()"})
    assert err.value.key == "failover_uri"


def test_integration_file_runs_every_sns_processor():
    cfg, _ = config.load(sns_file("integration.post_processing.conf"))
    queues = {p.queue for p in processors.build(cfg, "host")}
    assert {"/queue/CALVERA.RAW.DATA_READY", "/queue/CALVERA.REDUCED.DATA_READY", "/queue/INTERSECT.RAW.DATA_READY",
            "/queue/INTERSECT.REDUCED.DATA_READY", "/queue/REDUCTION.HIMEM.DATA_READY"} <= queues
    assert cfg.calvera_ingest_url == "http://not-valid.localhost:12345"
    assert cfg.ingest_timeout_sec == 3.0


def test_without_processors_a_node_takes_no_high_memory_runs():
    cfg, _ = config.from_mapping({})
    queues = [p.queue for p in processors.build(cfg, "host")]
    assert queues == ["/queue/CATALOG.ONCAT.DATA_READY", "/queue/REDUCTION_CATALOG.DATA_READY",
                      "/queue/REDUCTION.CREATE_SCRIPT", "/queue/REDUCTION.DATA_READY"]


@pytest.mark.parametrize("source, expected", [
    ("CONDA_ENV = 'sasview'\nprint(1)\n", ["nsd-conda-wrap.sh", "sasview", "--classic"]),
    ("  CONDA_ENV=mantid-dev\n", ["nsd-conda-wrap.sh", "mantid-dev", "--classic"]),
    ("print('no environment')\n", ["python3"]),
])
def test_mantidpython_command(tmp_path, source, expected):
    script = tmp_path / "reduce_X.py"
    script.write_text(source)
    assert mantidpython.command(str(script), ["d.nxs.h5", "/out/"]) == expected + [str(script), "d.nxs.h5", "/out/"]


def test_mantidpython_usage_and_unreadable_script(tmp_path):
    run = [sys.executable, os.path.join(ROOT, "postprocessing", "jobs", "mantidpython.py")]
    env = dict(os.environ, PYTHONPATH="")
    proc = subprocess.run(run + ["only-one"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "usage: mantidpython.py" in proc.stderr
    proc = subprocess.run(run + [str(tmp_path / "absent.py"), "d", "o"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 1 and "cannot read" in proc.stderr and "Traceback" not in proc.stderr


def test_configuration_readme_says_what_differs_from_sns():
    with open(os.path.join(ROOT, "configuration", "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    section = text.split("## Coming from the SNS agent", 1)
    assert len(section) == 2, "configuration/README.md has no section 'Coming from the SNS agent'"
    for key in ("failover_uri", "CATALOG.ERROR", "mantidpython.py", "communication_only"):
        assert key in section[1], key
    for key in ("calvera_ingest_url", "intersect_ingest_url", "ingest_timeout_sec", "test_data_ready"):
        assert "`%s`" % key in text, key

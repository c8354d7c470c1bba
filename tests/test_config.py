"""Configuration: the SNS file loads unchanged; bad values name their key and exit 2."""

import json
import os
import subprocess
import sys

import pytest

from postprocessing import config
from postprocessing.errors import ConfigError

LEGACY = {
    "failover_uri": "failover:(tcp://localhost:61613)?randomize=false",
    "brokers": [["localhost", 61613]], "amq_user": "icat", "amq_pwd": "s3cret-pw",
    "sw_dir": "/opt/postprocessing", "python_dir": "/opt/postprocessing/postprocessing",
    "start_script": "python3", "task_script": "PostProcessAdmin.py",
    "task_script_queue_arg": "-q", "task_script_data_arg": "-d",
    "log_file": "/opt/postprocessing/log/postprocessing.log",
    "postprocess_error": "POSTPROCESS.ERROR", "reduction_started": "REDUCTION.STARTED",
    "reduction_complete": "REDUCTION.COMPLETE", "reduction_error": "REDUCTION.ERROR",
    "reduction_disabled": "REDUCTION.DISABLED", "heart_beat": "/topic/SNS.COMMON.STATUS.AUTOREDUCE.0",
    "dev_output_dir": "", "dev_instrument_shared": "", "reduction_data_ready": "REDUCTION.DATA_READY",
    "communication_only": 0, "max_procs": 5, "jobs_per_instrument": 2,
    "exceptions": ["Error in logging framework"], "python_exec": "python3",
    "system_mem_limit_perc": 70.0, "mem_check_interval_sec": 0.2, "task_time_limit_minutes": 60.0,
    "processors": ["reduction_processor.ReductionProcessor",
                   "reduction_processor.ReductionProcessorHighMemory"],
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_sns_file_loads_unchanged():
    cfg, notes = config.from_mapping(LEGACY)
    assert cfg.brokers == (("localhost", 61613),)
    assert cfg.processors == ("reduction", "reduction_himem")
    assert cfg.communication_only is False and cfg.max_procs == 5
    assert cfg.destination("reduction_complete") == "/queue/REDUCTION.COMPLETE"
    assert cfg.heart_beat == "/topic/SNS.COMMON.STATUS.AUTOREDUCE.0"
    ignored = [n for n in notes if "not needed" in n]
    assert len(ignored) == 7 and any("'failover_uri'" in n for n in ignored)
    assert "s3cret-pw" not in repr(cfg) and "s3cret-pw" not in json.dumps(cfg.safe_items())


def test_defaults_and_new_keys():
    cfg, _ = config.from_mapping({})
    assert cfg.data_root == "/" and cfg.facility == "SNS" and cfg.heartbeat_interval_sec == 30
    assert cfg.processors == config.DEFAULT_PROCESSORS
    assert config.queue_destination("/queue/X") == "/queue/X" == config.queue_destination("X")


@pytest.mark.parametrize("key, value", [
    ("max_procs", "5"), ("max_procs", 0), ("communication_only", 2), ("brokers", [["h", "61613"]]),
    ("brokers", []), ("exceptions", ["(unclosed"]), ("system_mem_limit_perc", 150),
    ("processors", ["nope.Processor"]), ("log_level", "LOUD"), ("data_root", "relative"),
    ("heartbeat_interval_sec", True), ("conda_wrapper", ["conda", "run"]),
    ("facility", "S N S"), ("facility", ""), ("facility", "../x"), ("log_max_bytes", -1),
    ("log_backup_count", -1), ("max_wait_hold_sec", 0), ("ingest_timeout_sec", 0),
    ("management_url", "broker:8161"), ("management_url", 8161), ("management_poll_sec", 0),
    ("management_timeout_sec", -1), ("management_pwd", "secret"),
])
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ConfigError) as err:
        config.from_mapping({key: value})
    assert err.value.key == key and key in str(err.value)


def test_an_http_cataloguer_needs_its_url():
    with pytest.raises(ConfigError) as err:
        config.from_mapping({"processors": ["intersect_processor.IntersectReducedProcessor"]})
    assert err.value.key == "intersect_ingest_url"
    cfg, _ = config.from_mapping({"processors": ["intersect_processor.IntersectReducedProcessor"],
                                  "intersect_ingest_url": "http://example.invalid/"})
    assert cfg.processors == ("intersect_reduced",)


def test_without_processors_and_exceptions_the_sns_defaults_apply():
    """SNS's default list has no high-memory processor, and excuses 'Error in logging framework'."""
    cfg, _ = config.from_mapping({})
    assert cfg.processors == ("oncat", "oncat_reduced", "create_script", "reduction")
    assert "reduction_himem" not in cfg.processors
    assert cfg.exceptions == ("Error in logging framework",)
    assert any(p.search("Error: Error in logging framework") for p in cfg.exception_patterns)
    assert config.from_mapping({"exceptions": []})[0].exceptions == ()


def test_every_sns_processor_name_is_known():
    names = ["calvera_processor.CalveraProcessor", "calvera_processor.CalveraReducedProcessor",
             "intersect_processor.IntersectProcessor", "intersect_processor.IntersectReducedProcessor",
             "test_processor.TestProcessor"]
    cfg, _ = config.from_mapping({"processors": names, "calvera_ingest_url": "http://c.invalid/",
                                  "intersect_ingest_url": "http://i.invalid/"})
    assert cfg.processors == ("calvera", "calvera_reduced", "intersect", "intersect_reduced", "test")


def test_job_nice_below_the_agents_own_niceness_is_refused():
    own = os.nice(0)
    bad = own - 1 if own > 0 else -1
    with pytest.raises(ConfigError) as err:
        config.from_mapping({"job_nice": bad})
    assert err.value.key == "job_nice" and "niceness" in str(err.value)
    assert config.from_mapping({"job_nice": max(own, 0)})[0].job_nice == max(own, 0)


def test_job_nice_is_a_level_not_an_increment():
    """An agent started at nice 3 with job_nice 5 runs its jobs at 5, not 8."""
    code = ("import os, subprocess, sys\n"
            "from postprocessing.jobs.process import _child_setup\n"
            "os.nice(3 - os.nice(0))\n"
            "out = subprocess.run([sys.executable, '-c', 'import os; print(os.nice(0))'], preexec_fn=_child_setup(5),"
            " capture_output=True, text=True).stdout\n"
            "print(out.strip())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5"


@pytest.mark.parametrize("key, value", [
    ("facility", "S N S"), ("log_max_bytes", -5), ("log_backup_count", -1), ("max_wait_hold_sec", 0),
    ("job_nice", -1),
])
def test_cli_exits_2_naming_the_bad_key(tmp_path, key, value):
    conf = tmp_path / "c.conf"
    conf.write_text(json.dumps({key: value, "allow_root": True, "log_file": ""}))
    result = cli("--config", str(conf), "run")
    assert result.returncode == 2, result.stderr
    assert key in result.stderr and "Traceback" not in result.stderr


def test_config_path_precedence():
    assert config.config_path("a.conf", {"POSTPROCESSING_CONFIG": "b.conf"}) == "a.conf"
    assert config.config_path(None, {"POSTPROCESSING_CONFIG": "b.conf"}) == "b.conf"
    assert config.config_path(None, {}) == "/etc/autoreduce/post_processing.conf"


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "postprocessing", *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})), timeout=60)


def test_cli_exits_2_before_connecting(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text(json.dumps(dict(LEGACY, max_procs="five")))
    result = cli("--config", str(bad), "run")
    assert result.returncode == 2
    assert "max_procs" in result.stderr and "Traceback" not in result.stderr
    assert "s3cret-pw" not in result.stderr

    broken = tmp_path / "broken.conf"
    broken.write_text("{not json")
    result = cli("run", env={"POSTPROCESSING_CONFIG": str(broken)})
    assert result.returncode == 2 and "not valid JSON" in result.stderr

    result = cli("--config", str(tmp_path / "missing.conf"), "run")
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_log_file_that_cannot_be_written_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    conf = tmp_path / "c.conf"
    conf.write_text(json.dumps({"log_file": str(blocker / "sub" / "x.log"), "allow_root": True}))
    result = cli("--config", str(conf), "run")
    assert result.returncode == 2 and "log_file" in result.stderr
    assert "the log directory %s is missing and cannot be created" % (blocker / "sub") in result.stderr

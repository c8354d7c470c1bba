"""Every reduction outcome, end to end: real broker, real agent process, real scripts."""

import json
import os
import stat

import pytest

pytestmark = pytest.mark.broker

OK_SCRIPT = """
import sys
data_file, out_dir = sys.argv[1], sys.argv[2]
print("reducing", data_file)
with open(out_dir + "reduced.txt", "w") as handle:
    handle.write(data_file)
"""


def test_complete_echoes_fields_and_keeps_the_log(make_agent, facility, client):
    facility.script("CNCS", OK_SCRIPT)
    agent = make_agent().start()
    msg = facility.run("CNCS", "IPTS-1234", 100, extra_field="kept")
    client.send(agent.q("reduction_data_ready"), msg)

    complete = client.wait(agent.q("reduction_complete"))[0]
    started = client.get(agent.q("reduction_started"))
    assert started and started[0]["run_number"] == "100"
    assert client.times[agent.q("reduction_started")][0] <= client.times[agent.q("reduction_complete")][0]
    for key, value in msg.items():
        assert complete[key] == value
    assert complete["information"] == os.uname().nodename
    assert "error" not in complete
    out = facility.output_dir("CNCS", "IPTS-1234")
    assert open(os.path.join(out, "reduced.txt")).read() == msg["data_file"]
    log = os.path.join(out, "reduction_log", "CNCS_100.nxs.h5.log")
    assert "reducing" in open(log).read()
    assert not os.path.exists(os.path.join(out, "reduction_log", "CNCS_100.nxs.h5.err"))
    assert "[CNCS 100]" in agent.log()


def test_runtime_error_gives_its_message(make_agent, facility, client):
    facility.script("CNCS", "raise RuntimeError('This is an ERROR!')\n")
    agent = make_agent().start()
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
    error = client.wait(agent.q("reduction_error"))[0]
    assert error["error"] == "REDUCTION: This is an ERROR!"
    assert client.get(agent.q("reduction_started"))
    err = os.path.join(facility.output_dir("CNCS", "IPTS-1"), "reduction_log", "CNCS_1.nxs.h5.err")
    assert "Traceback" in open(err).read()


@pytest.mark.parametrize("script, expected", [
    ("import sys\nsys.exit(3)\n", "REDUCTION: exit status 3"),
    ("import sys\nsys.stderr.write('just a warning\\n\\n')\n", "REDUCTION: just a warning"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", "REDUCTION: killed by signal SIGSEGV"),
])
def test_error_line_choice(make_agent, facility, client, script, expected):
    facility.script("CNCS", script)
    agent = make_agent().start()
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 2))
    assert client.wait(agent.q("reduction_error"))[0]["error"] == expected


def test_excused_error_counts_as_complete(make_agent, facility, client):
    facility.script("CNCS", "import sys\nsys.stderr.write('Error in logging framework\\n')\n")
    agent = make_agent(exceptions=["Error in logging framework"]).start()
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 3))
    complete = client.wait(agent.q("reduction_complete"))[0]
    assert complete["information"] == "Error in logging framework"
    assert not client.get(agent.q("reduction_error"))


def test_no_script_means_disabled(make_agent, facility, client):
    agent = make_agent().start()
    client.send(agent.q("reduction_data_ready"), facility.run("BASIS", "IPTS-9", 4))
    disabled = client.wait(agent.q("reduction_disabled"))[0]
    assert disabled["instrument"] == "BASIS"
    assert client.get(agent.q("reduction_started"))


def test_data_file_problems_go_to_postprocess_error(make_agent, facility, client):
    facility.script("CNCS", OK_SCRIPT)
    agent = make_agent().start()
    missing = os.path.join(facility.root, "SNS", "CNCS", "IPTS-1", "nexus", "CNCS_404.nxs.h5")
    client.send(agent.q("reduction_data_ready"), dict(facility.run("CNCS", "IPTS-1", 5), data_file=missing))
    directory = os.path.dirname(missing)
    client.send(agent.q("reduction_data_ready"), dict(facility.run("CNCS", "IPTS-1", 6), data_file=directory))
    client.send(agent.q("reduction_data_ready"), dict(facility.run("CNCS", "IPTS-1", 7), data_file="/etc/hostname"))
    errors = client.wait(agent.q("postprocess_error"), 3)
    texts = sorted(e["error"] for e in errors)
    assert "Data file not found: %s" % missing in texts
    assert any(t.startswith("Data file open error for file %s" % directory) for t in texts)
    assert "Data file is outside the data root: /etc/hostname" in texts
    assert not client.get(agent.q("reduction_started"))


@pytest.mark.parametrize("drop, message", [
    ("instrument", "Instrument is missing"), ("ipts", "IPTS is missing"),
    ("run_number", "Run number is missing"), ("data_file", "Data file is missing"),
])
def test_missing_fields(make_agent, facility, client, drop, message):
    agent = make_agent().start()
    body = facility.run("CNCS", "IPTS-1", 8)
    del body[drop]
    client.send(agent.q("reduction_data_ready"), body)
    error = client.wait(agent.q("postprocess_error"))[0]
    assert error["error"] == message
    assert error["information"] == os.uname().nodename


def test_path_tricks_never_reach_the_filesystem(make_agent, facility, client):
    agent = make_agent().start()
    good = facility.run("CNCS", "IPTS-1", 9)
    tricks = [
        dict(good, instrument="../../tmp"), dict(good, instrument="A/B"), dict(good, instrument=""),
        dict(good, instrument="CN\x00CS"), dict(good, ipts=".."), dict(good, ipts="IPTS-1/../../x"),
        dict(good, facility="../SNS"), dict(good, run_number="1; rm -rf /"), dict(good, run_number=True),
        dict(good, instrument=["CNCS"]),
    ]
    for body in tricks:
        client.send(agent.q("reduction_data_ready"), body)
    errors = client.wait(agent.q("postprocess_error"), len(tricks))
    assert all("is not a plain name" in e["error"] or "is not a number" in e["error"] for e in errors)
    assert sorted(os.listdir(facility.root)) == ["SNS"]
    assert sorted(os.listdir(os.path.join(facility.root, "SNS"))) == ["CNCS"]
    assert agent.proc.poll() is None


def test_malformed_bodies(make_agent, client):
    agent = make_agent(max_body_bytes=4096).start()
    client.send(agent.q("reduction_data_ready"), "{not json at all")
    client.send(agent.q("reduction_data_ready"), b"\xff\xfe invalid utf-8")
    client.send(agent.q("reduction_data_ready"), "[1, 2, 3]")
    client.send(agent.q("reduction_data_ready"), "[" * 100000 + "]" * 100000)
    client.send(agent.q("reduction_data_ready"), json.dumps({"x": "y" * 10000}))
    errors = client.wait(agent.q("postprocess_error"), 5)
    by_error = {e["error"].split(":")[0]: e for e in errors}
    assert by_error["Malformed JSON"]["raw"] == "{not json at all"
    assert "Message body is not UTF-8" in by_error
    assert "Message body is not a JSON object" in by_error
    assert "Message body too large" in by_error
    assert all(len(json.dumps(e)) < 4096 for e in errors)
    assert agent.proc.poll() is None


def test_lenient_senders_lowercase_int_and_no_facility(make_agent, facility, client):
    facility.script("CNCS", OK_SCRIPT)
    agent = make_agent().start()
    body = facility.run("CNCS", "IPTS-77", 10)
    body.update(instrument="cncs", ipts="ipts-77", run_number=10)
    del body["facility"]
    client.send(agent.q("reduction_data_ready"), body)
    complete = client.wait(agent.q("reduction_complete"))[0]
    assert complete["instrument"] == "cncs" and complete["run_number"] == 10
    assert "facility" not in complete
    assert os.path.exists(os.path.join(facility.output_dir("CNCS", "IPTS-77"), "reduced.txt"))


def test_run_summary_runs_first(make_agent, facility, client):
    facility.script("CNCS", OK_SCRIPT)
    facility.script("CNCS", """
        import sys
        inst, data, csv = sys.argv[1:4]
        open(csv, "w").write(inst + "," + data)
    """, name="sumRun_CNCS.py")
    agent = make_agent().start()
    msg = facility.run("CNCS", "IPTS-5", 11)
    client.send(agent.q("reduction_data_ready"), msg)
    client.wait(agent.q("reduction_complete"))
    csv = os.path.join(facility.output_dir("CNCS", "IPTS-5"), "CNCS_IPTS-5_runsummary.csv")
    assert open(csv).read() == "CNCS," + msg["data_file"]


def test_conda_env_runs_through_the_wrapper(make_agent, facility, client, tmp_path):
    wrapper = tmp_path / "conda-wrap"
    wrapper.write_text("#!/bin/sh\necho \"$@\" > %s/wrapped\nenv=$1; shift; shift\nexec python3 \"$@\"\n"
                       % tmp_path)
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    facility.script("CNCS", "CONDA_ENV='sasview'\n" + OK_SCRIPT)
    agent = make_agent(conda_wrapper=[str(wrapper), "{env}", "--classic"]).start()
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 12))
    client.wait(agent.q("reduction_complete"))
    args = (tmp_path / "wrapped").read_text().split()
    assert args[:2] == ["sasview", "--classic"]
    assert args[2].endswith("reduce_CNCS.py")


def test_communication_only_runs_nothing(make_agent, facility, client):
    facility.script("CNCS", OK_SCRIPT)
    agent = make_agent(communication_only=1).start()
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 13))
    client.wait(agent.q("reduction_complete"))
    assert client.get(agent.q("reduction_started"))
    assert not os.path.exists(os.path.join(facility.output_dir("CNCS", "IPTS-1"), "reduced.txt"))


def test_himem_queue_reduces_too(make_agent, facility, client):
    facility.script("CNCS", OK_SCRIPT)
    agent = make_agent(processors=["reduction_processor.ReductionProcessor",
                                   "reduction_processor.ReductionProcessorHighMemory"]).start()
    client.send(agent.q("reduction_himem_data_ready"), facility.run("CNCS", "IPTS-1", 14))
    assert client.wait(agent.q("reduction_complete"))[0]["run_number"] == "14"


def test_jobs_get_a_sanitised_environment(make_agent, facility, client, monkeypatch):
    facility.script("CNCS", """
        import json, os, sys
        json.dump(dict(os.environ), open(sys.argv[2] + "env.json", "w"))
    """)
    monkeypatch.setenv("AMQ_SECRET_FOR_TEST", "hunter2")
    agent = make_agent().start()
    client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 15))
    client.wait(agent.q("reduction_complete"))
    env = json.load(open(os.path.join(facility.output_dir("CNCS", "IPTS-1"), "env.json")))
    assert "AMQ_SECRET_FOR_TEST" not in env and "POSTPROCESSING_CONFIG" not in env
    assert env["POSTPROCESSING_AGENT_ID"].startswith("%d:" % agent.pid)
    assert "icat" not in json.dumps(env)

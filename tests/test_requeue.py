"""``postprocessing requeue`` against the real broker and a real PostgreSQL workflow database."""

import datetime
import getpass
import os
import pty
import subprocess
import sys
import uuid

import pytest

from tests.conftest import base_config
from tests.support import queues, workflowdb
from tests.support.agentproc import ROOT
from tests.support.cli import assert_no_traceback, run_cli, write_config

pytestmark = pytest.mark.broker


@pytest.fixture
def conf(broker, facility, tmp_path):
    cfg = base_config(broker, facility, "RQ%d" % os.getpid())
    cfg["log_file"] = str(tmp_path / "cli.log")
    return write_config(str(tmp_path / "cli.conf"), cfg)


@pytest.fixture
def target(request):
    """A queue name private to the test."""
    name = request.node.name.replace("[", "_").replace("]", "")[:40]
    return "RQ_%d_%s_%s.DATA_READY" % (os.getpid(), name, uuid.uuid4().hex[:6])


@pytest.fixture
def workflow_db():
    yield from workflowdb.create()


def legacy_file(facility, inst, ipts, run):
    directory = os.path.join(facility.root, "SNS", inst, ipts, "0", str(run), "NeXus")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "%s_%d_event.nxs" % (inst, run))
    with open(path, "wb") as handle:
        handle.write(b"legacy")
    return path


def by_run(messages):
    return {body["run_number"]: (headers, body) for headers, body in messages}


def test_explicit_runs_use_the_layout_and_report_missing_files(conf, facility, broker, target):
    paths = {run: facility.data_file("CNCS", "IPTS-1234", run) for run in (100, 101, 102, 103, 130)}
    paths[104] = legacy_file(facility, "CNCS", "IPTS-1234", 104)
    proc = run_cli(conf, "requeue", "--instrument", "cncs", "--ipts", "ipts-1234", "--runs", "100-105,130,101",
                   "--queue", target, "--user", "opsperson")
    assert_no_traceback(proc)
    assert proc.returncode == 1, proc.stderr
    assert "missing data file, not sent: CNCS 105 (IPTS-1234)" in proc.stderr
    assert os.path.join(facility.root, "SNS", "CNCS", "IPTS-1234", "nexus", "CNCS_105.nxs.h5") in proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary == "requeue: sent 6 of 7 runs to /queue/%s, 1 missing data files" % target

    got = by_run(queues.take(broker, "/queue/" + target, 6))
    assert sorted(got, key=int) == ["100", "101", "102", "103", "104", "130"]
    for run, (headers, body) in got.items():
        assert headers["persistent"] == "true"
        assert body == {"facility": "SNS", "instrument": "CNCS", "ipts": "IPTS-1234", "run_number": run,
                        "data_file": paths[int(run)], "information": "Requested by opsperson via requeue"}


def test_nexus_file_wins_over_legacy(conf, facility, broker, target):
    nexus = facility.data_file("CNCS", "IPTS-1", 7)
    legacy_file(facility, "CNCS", "IPTS-1", 7)
    proc = run_cli(conf, "requeue", "--instrument", "CNCS", "--ipts", "IPTS-1", "--runs", "7", "--queue", target)
    assert proc.returncode == 0, proc.stderr
    [(_, body)] = queues.take(broker, "/queue/" + target, 1)
    assert body["data_file"] == nexus
    assert body["information"] == "Requested by %s via requeue" % getpass.getuser()


def test_data_file_option(conf, facility, broker, target, tmp_path):
    first = facility.data_file("BSS", "IPTS-9", 5)
    second = legacy_file(facility, "BSS", "IPTS-9", 6)
    gone = os.path.join(facility.root, "SNS", "BSS", "IPTS-9", "nexus", "BSS_8.nxs.h5")
    proc = run_cli(conf, "requeue", "--data-file", first, "--data-file", second, "--data-file", gone,
                   "--queue", "/queue/" + target)
    assert proc.returncode == 1
    assert "missing data file, not sent: BSS 8 (IPTS-9)" in proc.stderr
    got = by_run(queues.take(broker, "/queue/" + target, 2))
    assert got["5"][1]["data_file"] == first and got["5"][1]["ipts"] == "IPTS-9"
    assert got["6"][1]["data_file"] == second

    outside = tmp_path / "CNCS_1.nxs.h5"
    outside.write_bytes(b"x")
    proc = run_cli(conf, "requeue", "--data-file", str(outside))
    assert proc.returncode == 2
    assert "not a run file under data_root" in proc.stderr
    assert_no_traceback(proc)


def test_dry_run_sends_nothing(conf, facility, broker, target):
    path = facility.data_file("CNCS", "IPTS-1", 1)
    proc = run_cli(conf, "requeue", "--instrument", "CNCS", "--ipts", "IPTS-1", "--runs", "1-2", "--queue", target,
                   "--dry-run")
    assert proc.returncode == 1
    assert "would send CNCS 1 (IPTS-1) %s -> /queue/%s" % (path, target) in proc.stdout
    assert "requeue (dry run): 1 of 2 runs would be sent" in proc.stdout
    assert "CNCS 2 (IPTS-1)" in proc.stderr
    assert queues.take(broker, "/queue/" + target, 1, timeout=1.5) == []


def test_more_than_fifty_runs_ask_first(conf, facility, broker, target):
    for run in range(1, 61):
        facility.data_file("CNCS", "IPTS-2", run)
    args = ("requeue", "--instrument", "CNCS", "--ipts", "IPTS-2", "--runs", "1-60", "--queue", target)
    proc = run_cli(conf, *args, stdin="n\n")
    assert proc.returncode == 1
    assert "Send 60 runs to /queue/%s? [y/N]" % target in proc.stderr
    assert "not confirmed; nothing sent" in proc.stderr
    proc = run_cli(conf, *args, stdin="")
    assert proc.returncode == 1
    assert queues.take(broker, "/queue/" + target, 1, timeout=1.5) == []

    proc = run_cli(conf, *args, stdin="yes\n")
    assert proc.returncode == 0, proc.stderr
    assert len(queues.take(broker, "/queue/" + target, 60)) == 60

    proc = run_cli(conf, *args, "--yes")
    assert proc.returncode == 0
    assert "[y/N]" not in proc.stderr
    assert len(queues.take(broker, "/queue/" + target, 60)) == 60


def test_progress_bar_only_on_a_terminal(conf, facility, broker, target):
    for run in range(1, 6):
        facility.data_file("CNCS", "IPTS-3", run)
    args = ["requeue", "--instrument", "CNCS", "--ipts", "IPTS-3", "--runs", "1-5", "--queue", target]
    plain = run_cli(conf, *args)
    assert plain.returncode == 0
    assert "#" not in plain.stderr and "\r" not in plain.stderr

    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "postprocessing", "--config", conf] + args,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=child_fd,
                            env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
    os.close(child_fd)
    out, _ = proc.communicate(timeout=60)
    terminal = b""
    while True:
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        terminal += chunk
    os.close(main_fd)
    assert proc.returncode == 0
    assert b"\rrequeue [" in terminal and b"5/5" in terminal, terminal
    assert b"sent 5 of 5 runs" in out
    assert len(queues.take(broker, "/queue/" + target, 10, timeout=5)) == 10


@pytest.mark.parametrize("args, message", [
    (["--runs", "1-3"], "--runs needs --instrument and --ipts"),
    (["--instrument", "CNCS", "--ipts", "IPTS-1", "--runs", "5-1"], "range 5-1 goes backwards"),
    (["--instrument", "CNCS", "--ipts", "IPTS-1", "--runs", "1,x"], "'x' is not a run number"),
    (["--instrument", "../x", "--ipts", "IPTS-1", "--runs", "1"], "Instrument is not a plain name"),
    (["--instrument", "CNCS", "--ipts", "IPTS-1", "--runs", "1", "--since", "2024-01-01"],
     "--since only applies with --from-db"),
    ([], "say which runs"),
    (["--from-db", "dbname=x", "--runs", "1"], "cannot be combined"),
    (["--instrument", "CNCS", "--ipts", "IPTS-1", "--runs", "1", "--queue", "a b"], "is not a queue name"),
])
def test_bad_arguments_are_usage_errors(conf, args, message):
    proc = run_cli(conf, "requeue", *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert_no_traceback(proc)


def test_unreachable_broker_is_reported(facility, tmp_path):
    cfg = {"brokers": [["127.0.0.1", 1]], "data_root": facility.root, "connect_timeout_sec": 1}
    path = write_config(str(tmp_path / "nobroker.conf"), cfg)
    facility.data_file("CNCS", "IPTS-1", 1)
    proc = run_cli(path, "requeue", "--instrument", "CNCS", "--ipts", "IPTS-1", "--runs", "1")
    assert proc.returncode == 1
    assert "cannot connect to the broker" in proc.stderr
    assert "requeue: sent 0 of 1 runs" in proc.stdout
    assert_no_traceback(proc)


# -- from the workflow database ----------------------------------------------------------
@pytest.fixture
def history(workflow_db, facility):
    """Runs with a known workflow history; returns the run numbers by what they are."""
    db = workflow_db
    may = datetime.datetime(2024, 5, 10, tzinfo=datetime.timezone.utc)
    march = datetime.datetime(2024, 3, 1, tzinfo=datetime.timezone.utc)

    def run(inst, ipts, number, created=may, complete=False, exists=True):
        path = facility.data_file(inst, ipts, number) if exists else os.path.join(
            facility.root, "SNS", inst, ipts, "nexus", "%s_%d.nxs.h5" % (inst, number))
        return db.run(inst, ipts, number, path, created, complete)

    failed = run("CNCS", "IPTS-10", 1)
    db.status(failed, "REDUCTION.DATA_READY", "REDUCTION.STARTED", "REDUCTION.ERROR", error="REDUCTION: boom")
    fixed = run("CNCS", "IPTS-10", 2, complete=True)
    db.status(fixed, "REDUCTION.DATA_READY", "REDUCTION.ERROR", "REDUCTION.DATA_READY", "REDUCTION.STARTED",
              "REDUCTION.COMPLETE")
    catalog_failed = run("CNCS", "IPTS-10", 3)
    db.status(catalog_failed, "REDUCTION.COMPLETE", "CATALOG.ONCAT.DATA_READY", "CATALOG.ONCAT.ERROR",
              error="ONCat is down")
    other_instrument = run("BSS", "IPTS-20", 4)
    db.status(other_instrument, "REDUCTION.ERROR", error="REDUCTION: no memory")
    reduced_catalog_failed = run("CNCS", "IPTS-10", 5, complete=True)
    db.status(reduced_catalog_failed, "REDUCTION.COMPLETE", "REDUCTION_CATALOG.ERROR")
    old = run("CNCS", "IPTS-10", 6, created=march)
    db.status(old, "REDUCTION.ERROR")
    missing = run("CNCS", "IPTS-10", 7, exists=False)
    db.status(missing, "REDUCTION.STARTED", "REDUCTION.ERROR")
    return db


def test_db_error_runs_are_sent(conf, workflow_db, facility, broker, target):
    """The step of a private queue, so that the messages can be checked on a shared broker."""
    step = target[:-len(".DATA_READY")]
    may = datetime.datetime(2024, 5, 10, tzinfo=datetime.timezone.utc)
    db = workflow_db
    failed = db.run("CNCS", "IPTS-10", 1, facility.data_file("CNCS", "IPTS-10", 1), may)
    db.status(failed, step + ".DATA_READY", step + ".STARTED", step + ".ERROR", error="boom")
    fixed = db.run("CNCS", "IPTS-10", 2, facility.data_file("CNCS", "IPTS-10", 2), may)
    db.status(fixed, step + ".ERROR", step + ".DATA_READY", step + ".COMPLETE")
    old = db.run("CNCS", "IPTS-10", 3, facility.data_file("CNCS", "IPTS-10", 3),
                 datetime.datetime(2024, 3, 1, tzinfo=datetime.timezone.utc))
    db.status(old, step + ".ERROR")
    other = db.run("BSS", "IPTS-20", 4, facility.data_file("BSS", "IPTS-20", 4), may)
    db.status(other, step + ".ERROR")
    missing = db.run("CNCS", "IPTS-10", 7, "/nowhere/CNCS_7.nxs.h5", may)
    db.status(missing, step + ".ERROR")

    proc = run_cli(conf, "requeue", "--from-db", db.dsn, "--instrument", "cncs", "--since", "2024-05-01",
                   "--queue", target, "--user", "night-shift")
    assert_no_traceback(proc)
    assert proc.returncode == 1, proc.stderr
    assert "missing data file, not sent: CNCS 7 (IPTS-10)" in proc.stderr
    assert "/nowhere/CNCS_7.nxs.h5" in proc.stderr
    assert "requeue: sent 1 of 2 runs to /queue/%s, 1 missing data files" % target in proc.stdout
    [(headers, body)] = queues.take(broker, "/queue/" + target, 1)
    assert body == {"facility": "SNS", "instrument": "CNCS", "ipts": "IPTS-10", "run_number": "1",
                    "data_file": facility.data_file("CNCS", "IPTS-10", 1),
                    "information": "Requested by night-shift via requeue"}
    assert headers["persistent"] == "true"


def test_db_error_status_follows_the_target_step(conf, history):
    proc = run_cli(conf, "requeue", "--from-db", history.dsn, "--dry-run")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("would send")]
    assert [line.split()[2:5] for line in lines] == [
        ["BSS", "4", "(IPTS-20)"], ["CNCS", "1", "(IPTS-10)"], ["CNCS", "6", "(IPTS-10)"]]
    assert "[REDUCTION: boom]" in lines[1] and "[REDUCTION: no memory]" in lines[0]
    assert "[REDUCTION.ERROR]" in lines[2]

    proc = run_cli(conf, "requeue", "--from-db", history.dsn, "--queue", "CATALOG.ONCAT.DATA_READY", "--dry-run")
    assert proc.returncode == 0
    lines = [line for line in proc.stdout.splitlines() if line.startswith("would send")]
    assert len(lines) == 1 and "CNCS 3 (IPTS-10)" in lines[0] and "[ONCat is down]" in lines[0]
    assert "-> /queue/CATALOG.ONCAT.DATA_READY" in lines[0]

    proc = run_cli(conf, "requeue", "--from-db", history.dsn, "--queue", "REDUCTION_CATALOG.DATA_READY",
                   "--dry-run")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("would send")]
    assert len(lines) == 1 and "CNCS 5 (IPTS-10)" in lines[0]


def test_db_error_counts_sns_catalog_error_for_the_reduced_catalog_step(conf, workflow_db, facility):
    """Under the SNS agent a failed reduced catalogue answers CATALOG.ERROR."""
    db = workflow_db
    may = datetime.datetime(2024, 5, 10, tzinfo=datetime.timezone.utc)
    sns_failed = db.run("CNCS", "IPTS-10", 21, facility.data_file("CNCS", "IPTS-10", 21), may, True)
    db.status(sns_failed, "REDUCTION.COMPLETE", "REDUCTION_CATALOG.DATA_READY", "REDUCTION_CATALOG.STARTED",
              "CATALOG.ERROR", error="ONCAT: Bad request")
    ours_failed = db.run("CNCS", "IPTS-10", 22, facility.data_file("CNCS", "IPTS-10", 22), may, True)
    db.status(ours_failed, "REDUCTION_CATALOG.STARTED", "REDUCTION_CATALOG.ERROR")
    fixed = db.run("CNCS", "IPTS-10", 23, facility.data_file("CNCS", "IPTS-10", 23), may, True)
    db.status(fixed, "CATALOG.ERROR", "REDUCTION_CATALOG.DATA_READY", "REDUCTION_CATALOG.COMPLETE")

    proc = run_cli(conf, "requeue", "--from-db", db.dsn, "--queue", "REDUCTION_CATALOG.DATA_READY",
                   "--status", "error", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("would send")]
    assert [line.split()[3] for line in lines] == ["21", "22"]
    assert "[ONCAT: Bad request]" in lines[0]

    proc = run_cli(conf, "requeue", "--from-db", db.dsn, "--queue", "CATALOG.ONCAT.DATA_READY", "--dry-run")
    assert proc.returncode == 0 and "no runs matched" in proc.stdout


def test_db_incomplete_and_any(conf, history):
    proc = run_cli(conf, "requeue", "--from-db", history.dsn, "--status", "incomplete", "--ipts", "IPTS-10",
                   "--dry-run")
    assert "requeue (dry run): 3 of 4 runs would be sent" in proc.stdout
    sent = sorted(line.split()[3] for line in proc.stdout.splitlines() if line.startswith("would send"))
    assert sent == ["1", "3", "6"]

    proc = run_cli(conf, "requeue", "--from-db", history.dsn, "--status", "any", "--instrument", "CNCS",
                   "--since", "2024-05-01", "--until", "2024-05-11", "--dry-run")
    assert "requeue (dry run): 4 of 5 runs would be sent" in proc.stdout
    proc = run_cli(conf, "requeue", "--from-db", history.dsn, "--status", "any", "--until", "2024-04-01",
                   "--dry-run")
    assert proc.returncode == 0
    assert "requeue (dry run): 1 of 1 runs would be sent" in proc.stdout

    proc = run_cli(conf, "requeue", "--from-db", history.dsn, "--instrument", "NOSUCH")
    assert proc.returncode == 0
    assert "no runs matched" in proc.stdout


def test_db_failures_are_reported_without_traceback(conf, history):
    proc = run_cli(conf, "requeue", "--from-db", "host=127.0.0.1 port=1 dbname=none connect_timeout=2")
    assert proc.returncode == 1
    assert "cannot connect to the workflow database" in proc.stderr
    assert_no_traceback(proc)
    proc = run_cli(conf, "requeue", "--from-db", history.dsn, "--since", "yesterday")
    assert proc.returncode == 2 and "--since: 'yesterday' is not a date" in proc.stderr
    proc = run_cli(conf, "requeue", "--from-db", history.dsn, "--queue", "SOME.QUEUE")
    assert proc.returncode == 2 and "needs a *.DATA_READY queue" in proc.stderr
    with history.conn.cursor() as cursor:
        cursor.execute("DROP TABLE report_workflowsummary")
    proc = run_cli(conf, "requeue", "--from-db", history.dsn, "--status", "incomplete")
    assert proc.returncode == 1 and "workflow database query failed" in proc.stderr
    assert_no_traceback(proc)

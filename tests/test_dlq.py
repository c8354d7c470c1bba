"""``postprocessing dlq`` on the real broker: dead letters made by NACK and sent directly."""

import json
import os
import time
import uuid

import pytest
import stomp

from tests.support import queues
from tests.support.cli import assert_no_traceback, broker_config, run_cli, write_config

pytestmark = pytest.mark.broker


@pytest.fixture
def names(request):
    tag = "DLQT%d_%s_%s" % (os.getpid(), request.node.name[-30:].replace("[", "_").replace("]", ""),
                            uuid.uuid4().hex[:6])
    return {"dlq": tag + ".DLQ", "reduce": "/queue/%s.REDUCTION" % tag, "catalog": "/queue/%s.CATALOG" % tag}


@pytest.fixture
def conf(broker, tmp_path, names):
    return write_config(str(tmp_path / "dlq.conf"), broker_config(broker, dead_letter_queue=names["dlq"]))


def run_message(inst, run):
    return {"instrument": inst, "ipts": "IPTS-1", "run_number": str(run), "facility": "SNS",
            "data_file": "/SNS/%s/IPTS-1/nexus/%s_%d.nxs.h5" % (inst, inst, run)}


def dead_letter(broker, names, destination, body, **headers):
    queues.send(broker, "/queue/" + names["dlq"], body,
                headers=dict({"original-destination": destination}, **headers))


@pytest.fixture
def filled(broker, names):
    for run in (1, 2):
        dead_letter(broker, names, names["reduce"], run_message("CNCS", run))
    dead_letter(broker, names, names["reduce"], run_message("CNCS", 2))
    dead_letter(broker, names, names["catalog"], run_message("BSS", 7), **{"x-custom": "kept"})
    dead_letter(broker, names, names["catalog"], "not json at all")
    return names


def test_list_summarises_and_leaves_everything(conf, filled):
    proc = run_cli(conf, "dlq", "list")
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["ORIGINAL", "DESTINATION", "INSTRUMENT", "RUN", "COUNT"]
    rows = [line.split() for line in lines[1:-1]]
    assert rows == [[filled["catalog"], "-", "-", "1"], [filled["catalog"], "BSS", "7", "1"],
                    [filled["reduce"], "CNCS", "1", "1"], [filled["reduce"], "CNCS", "2", "2"]]
    assert lines[-1] == "5 messages in /queue/%s" % filled["dlq"]

    again = json.loads(run_cli(conf, "dlq", "list", "--json").stdout)
    assert again["count"] == 5
    assert {"original_destination": filled["reduce"], "instrument": "CNCS", "run": "2", "count": 2} in again["groups"]


def test_show_prints_selected_messages(conf, filled):
    proc = run_cli(conf, "dlq", "show", "--instrument", "bss")
    assert proc.returncode == 0
    assert "original-destination: %s" % filled["catalog"] in proc.stdout
    assert "x-custom: kept" in proc.stdout
    assert '"run_number": "7"' in proc.stdout
    assert proc.stdout.strip().endswith("1 message shown")

    records = [json.loads(line) for line in run_cli(conf, "dlq", "show", "--json").stdout.splitlines()
               if line.startswith("{")]
    assert len(records) == 5
    assert {"not json at all"} <= {r["body"] for r in records}
    proc = run_cli(conf, "dlq", "show", "--runs", "99")
    assert proc.returncode == 1 and "0 messages shown" in proc.stdout


def test_reinject_sends_back_with_a_header(conf, filled, broker):
    proc = run_cli(conf, "dlq", "reinject")
    assert proc.returncode == 2 and "select messages with" in proc.stderr

    proc = run_cli(conf, "dlq", "reinject", "--destination", filled["reduce"], "--runs", "2", "--dry-run")
    assert proc.returncode == 0
    assert proc.stdout.count("would reinject") == 2
    assert "5 messages" in run_cli(conf, "dlq", "list").stdout

    proc = run_cli(conf, "dlq", "reinject", "--destination", filled["reduce"].replace("/queue/", ""), "--runs", "2")
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert "dlq reinject: 2 of 2 selected messages sent back" in proc.stdout
    back = queues.take(broker, filled["reduce"], 2)
    assert len(back) == 2
    for headers, body in back:
        assert body == run_message("CNCS", 2)
        assert headers["dlq-reinjected"].startswith(time.strftime("%Y-", time.gmtime()))
        assert headers["persistent"] == "true"
        assert "original-destination" not in headers

    proc = run_cli(conf, "dlq", "reinject", "--instrument", "BSS")
    assert proc.returncode == 0
    [(headers, body)] = queues.take(broker, filled["catalog"], 1)
    assert headers["x-custom"] == "kept" and body["run_number"] == "7"

    listing = run_cli(conf, "dlq", "list").stdout
    assert "2 messages in" in listing and "BSS" not in listing


def test_purge_writes_the_file_first(conf, filled, tmp_path):
    out = tmp_path / "purged.jsonl"
    proc = run_cli(conf, "dlq", "purge", "--destination", filled["reduce"], "--output", str(out), stdin="n\n")
    assert proc.returncode == 1 and "nothing removed" in proc.stderr
    assert not out.exists()

    proc = run_cli(conf, "dlq", "purge", "--destination", filled["reduce"], "--output", str(out), "--yes")
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert "removed 3 messages" in proc.stdout and str(out) in proc.stdout
    saved = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(json.loads(r["body"])["run_number"] for r in saved) == ["1", "2", "2"]
    assert all(r["original_destination"] == filled["reduce"] and r["message_id"] for r in saved)

    proc = run_cli(conf, "dlq", "purge", "--all", "--output", str(out), "--yes")
    assert proc.returncode == 2 and "exists" in proc.stderr
    assert "2 messages in" in run_cli(conf, "dlq", "list").stdout

    proc = run_cli(conf, "dlq", "purge", "--all", "--yes", cwd=str(tmp_path))
    assert proc.returncode == 0
    written = [p for p in os.listdir(str(tmp_path)) if p.startswith("dlq-purged-")]
    assert len(written) == 1
    assert "0 messages in" in run_cli(conf, "dlq", "list").stdout


def deliver_and_give_up(broker, destination, count, nack):
    """Take ``count`` messages un-acked, then NACK them (ActiveMQ) or drop the connection (Artemis)."""
    conn, listener = queues.connect(broker)
    conn.subscribe(destination, id="n", ack="client-individual")
    with listener.cond:
        assert listener.cond.wait_for(lambda: len(listener.messages) >= count, timeout=30), listener.messages
    if nack:
        for headers, _ in listener.messages:
            conn.nack(headers["ack"])
        time.sleep(0.5)
    try:
        conn.disconnect()
    except stomp.exception.StompException:
        pass


@pytest.mark.activemq_only
def test_nacked_persistent_messages_reach_activemq_dlq(broker, tmp_path, names):
    """The broker's own path: a NACKed persistent message lands in ActiveMQ.DLQ."""
    for run in (11, 12):
        queues.send(broker, names["reduce"], run_message("HYS", run))
    deliver_and_give_up(broker, names["reduce"], 2, nack=True)
    check_broker_dead_letters(broker, tmp_path, names)


@pytest.mark.artemis_only
def test_artemis_dead_letters_after_max_delivery_attempts(private_broker, tmp_path, names):
    """Artemis moves a message to DLQ (with _AMQ_ORIG_ADDRESS) after max-delivery-attempts; a
    dropped connection counts as an attempt.  The tool finds DLQ without configuration."""
    broker = private_broker(max_delivery_attempts=2)
    for run in (11, 12):
        queues.send(broker, names["reduce"], run_message("HYS", run))
    delivered = [deliver_and_drop(broker, names["reduce"]) for _attempt in range(2)]
    while delivered[-1] and len(delivered) < 6:
        delivered.append(deliver_and_drop(broker, names["reduce"]))
    assert delivered[:2] == [2, 2] and delivered[-1] == 0, delivered
    check_broker_dead_letters(broker, tmp_path, names)


def deliver_and_drop(broker, destination):
    """Take what the queue gives within 3 s un-acked, then drop the connection; how many came."""
    conn, listener = queues.connect(broker)
    conn.subscribe(destination, id="n", ack="client-individual")
    time.sleep(3)
    with listener.cond:
        count = len(listener.messages)
    conn.disconnect()
    return count


def check_broker_dead_letters(broker, tmp_path, names):
    conf = write_config(str(tmp_path / "default.conf"), broker_config(broker))
    proc = run_cli(conf, "dlq", "list", "--json")
    groups = [g for g in json.loads(proc.stdout)["groups"] if g["original_destination"] == names["reduce"]]
    assert sorted((g["instrument"], g["run"], g["count"]) for g in groups) == [("HYS", "11", 1), ("HYS", "12", 1)]

    proc = run_cli(conf, "dlq", "reinject", "--destination", names["reduce"], "--runs", "11-12")
    assert proc.returncode == 0, proc.stderr
    back = queues.take(broker, names["reduce"], 2)
    assert sorted(body["run_number"] for _, body in back) == ["11", "12"]
    assert all("dlq-reinjected" in headers for headers, _ in back)
    proc = run_cli(conf, "dlq", "list", "--json")
    assert not [g for g in json.loads(proc.stdout)["groups"] if g["original_destination"] == names["reduce"]]


def test_dlq_errors_are_clear(tmp_path):
    path = write_config(str(tmp_path / "bad.conf"), {"brokers": [["127.0.0.1", 1]], "connect_timeout_sec": 1})
    proc = run_cli(path, "dlq", "list")
    assert proc.returncode == 1 and "cannot connect to the broker" in proc.stderr
    assert_no_traceback(proc)
    proc = run_cli(path, "dlq")
    assert proc.returncode == 2
    assert_no_traceback(proc)


def test_more_than_a_thousand_dead_letters(conf, broker, names, tmp_path):
    """list, show, reinject and purge read and settle 1,200 messages in one go."""
    total = 1200
    queues.send_many(broker, "/queue/" + names["dlq"], [run_message("CNCS", run) for run in range(1, total + 1)],
                     headers={"original-destination": names["reduce"]})
    listing = json.loads(run_cli(conf, "dlq", "list", "--json").stdout)
    assert listing["count"] == total
    assert sum(g["count"] for g in listing["groups"]) == total

    proc = run_cli(conf, "dlq", "show", "--runs", "1000-1009")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("10 messages shown")

    proc = run_cli(conf, "dlq", "reinject", "--runs", "1-700")
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert "dlq reinject: 700 of 700 selected messages sent back" in proc.stdout
    back = queues.take(broker, names["reduce"], 700, timeout=60)
    assert sorted(int(body["run_number"]) for _, body in back) == list(range(1, 701))

    proc = run_cli(conf, "dlq", "purge", "--all", "--yes", "--output", str(tmp_path / "purged.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert "removed 500 messages" in proc.stdout
    assert len((tmp_path / "purged.jsonl").read_text().splitlines()) == 500
    assert json.loads(run_cli(conf, "dlq", "list", "--json").stdout)["count"] == 0

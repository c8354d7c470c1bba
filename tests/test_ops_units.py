"""The package modules the operator commands call: pidfile, workflow-database query, dead letters."""

import datetime
import json

import pytest

from postprocessing import config as config_module
from postprocessing.errors import UsageError
from postprocessing.ops import deadletters, pidfile, workflowdb
from postprocessing.transport import Delivery


def test_pidfile_states(tmp_path):
    path = str(tmp_path / "pp.pid")
    assert pidfile.probe(path) == (pidfile.ABSENT, None)
    with open(path, "w") as handle:
        handle.write("not a pid\n")
    assert pidfile.read_pid(path) == (True, None)
    assert pidfile.probe(path) == (pidfile.DEAD, None)
    with open(path, "w") as handle:
        handle.write("999999999\n")
    assert pidfile.probe(path) == (pidfile.DEAD, 999999999)
    assert pidfile.gone(999999999)
    assert pidfile.remove_stale(path) and not pidfile.remove_stale(path)


def test_workflow_query_filters():
    since = datetime.datetime(2024, 5, 1)
    sql, params = workflowdb.query(workflowdb.RunFilter("error", "CNCS", None, since), "REDUCTION_CATALOG.DATA_READY")
    assert params["prefix"] == "REDUCTION_CATALOG." and params["also"] == ["CATALOG.ERROR"]
    assert params["instrument"] == "CNCS" and params["since"] == since and "ipts" not in params
    assert "r.created_on >= %(since)s" in sql and "upper(i.name) = upper(%(instrument)s)" in sql
    sql, params = workflowdb.query(workflowdb.RunFilter("incomplete"), "ANY.QUEUE")
    assert "w.complete = false" in sql and params == {}
    with pytest.raises(UsageError):
        workflowdb.query(workflowdb.RunFilter("error"), "REDUCTION.COMPLETE")


def letter(message_id, body, **headers):
    headers["message-id"] = message_id
    return deadletters.DeadLetter(Delivery(destination="/queue/DLQ", body=json.dumps(body).encode(),
                                           headers=headers, subscription="s", ack_id=message_id,
                                           message_id=message_id, epoch=1))


def test_dead_letters_select_and_reinject():
    a = letter("m1", {"instrument": "cncs", "run_number": 12}, **{"original-destination": "/queue/R.DATA_READY"})
    b = letter("m2", {"instrument": "BSS", "run_number": "13"}, _AMQ_ORIG_ADDRESS="R.DATA_READY", custom="x")
    assert (a.instrument, a.run, b.original_destination) == ("CNCS", "12", "/queue/R.DATA_READY")
    assert deadletters.Selection(instrument="cncs").pick([a, b]) == [a]
    assert deadletters.Selection(runs=frozenset({"13"})).pick([a, b]) == [b]
    assert not deadletters.Selection().given and deadletters.Selection().pick([a, b]) == [a, b]
    assert deadletters.summarise([a, b, a]) == [("/queue/R.DATA_READY", "BSS", "13", 1),
                                                ("/queue/R.DATA_READY", "CNCS", "12", 2)]
    target, body, headers = deadletters.reinjection(b, "/queue/R.DATA_READY", "2024-05-01T00:00:00+00:00")
    assert body == b.delivery.body and headers == {"custom": "x", deadletters.REINJECTED_HEADER:
                                                   "2024-05-01T00:00:00+00:00"}
    cfg, _ = config_module.from_mapping({})
    assert deadletters.dead_letter_queue(cfg, None, "artemis") == "/queue/DLQ"
    assert deadletters.dead_letter_queue(cfg, None, "rabbitmq") is None

"""The run journal (SQLite) and its configuration keys."""

import os
import sqlite3
import time

import pytest

from postprocessing import config
from postprocessing.agent.journal import Journal, identity
from postprocessing.errors import ConfigError


def test_an_unacked_record_answers_one_delivery_then_is_gone(tmp_path):
    journal = Journal(str(tmp_path / "j.db"), keep_sec=60)
    ident = identity("/queue/A", b"{}")
    row = journal.accepted(ident, "INST/1")
    journal.running(row)
    journal.confirmed(row, "/queue/DONE")
    assert journal.take_unacked(identity("/queue/B", b"{}")) is None, "another queue's request matched"
    later = int((time.time() + 30) * 1000)
    assert journal.take_unacked(ident, later) is None, "a request stamped after the answer matched"
    assert journal.take_unacked(ident, int((time.time() - 3600) * 1000)) == (row, None)
    assert journal.take_unacked(ident) is None, "a repeated request would be answered without running"


def test_an_acked_run_answers_nothing_and_survives_a_restart_for_cancels(tmp_path):
    path = str(tmp_path / "j.db")
    journal = Journal(path, keep_sec=60)
    ident = identity("/queue/A", b"x")
    row = journal.accepted(ident, "INST/7")
    journal.confirmed(row, "/queue/DONE")
    journal.acked(row)
    journal.close()
    again = Journal(path, keep_sec=60)
    assert again.take_unacked(ident) is None
    assert again.settled_since("INST/7", time.time() - 10)
    assert not again.settled_since("INST/8", time.time() - 10)


def test_the_claims_of_runs_running_at_a_crash_are_handed_to_the_next_agent_once(tmp_path):
    path = str(tmp_path / "j.db")
    journal = Journal(path, keep_sec=60)
    running = journal.accepted(identity("/queue/A", b"1"), None)
    journal.running(running, "/data/reduction_log/\udcff.lease\nnonce1")
    finished = journal.accepted(identity("/queue/A", b"2"), None)
    journal.running(finished, "/data/reduction_log/b.lease\nnonce2")
    journal.confirmed(finished, "/queue/DONE", "/data/reduction_log/b.lease\nnonce2")
    journal.close()
    assert Journal(path, keep_sec=60).abandoned_claims == ["/data/reduction_log/\udcff.lease\nnonce1"]
    assert Journal(path, keep_sec=60).abandoned_claims == []


def test_a_request_sent_back_for_a_data_retry_is_not_settled_for_cancels(tmp_path):
    journal = Journal(str(tmp_path / "j.db"), keep_sec=60)
    row = journal.accepted(identity("/queue/A", b"y"), "INST/9")
    journal.confirmed(row, "/queue/A", answered=False)
    journal.acked(row)
    assert not journal.settled_since("INST/9", time.time() - 10), "a cancel would find the retried run finished"


def test_an_unacked_record_survives_a_restart(tmp_path):
    path = str(tmp_path / "j.db")
    journal = Journal(path, keep_sec=60)
    ident = identity("/queue/A", b"y")
    journal.confirmed(journal.accepted(ident, None), "/queue/DONE")
    journal.close()
    assert Journal(path, keep_sec=60).take_unacked(ident) is not None


def test_old_records_are_pruned(tmp_path):
    journal = Journal(str(tmp_path / "j.db"), keep_sec=0.5)
    for n in range(50):
        row = journal.accepted(identity("/queue/A", b"%d" % n), None)
        journal.confirmed(row, "/queue/DONE")
        journal.acked(row)
    time.sleep(0.6)
    assert journal.prune() == 50
    assert journal.prune() == 0, "pruned more than once a minute"


def test_an_unusable_journal_path_names_the_key(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="journal_path"):
        Journal(os.path.join(str(blocker), "j.db"), keep_sec=60)


@pytest.mark.parametrize("key,value", [("journal_path", "relative/journal.db"), ("lease_refresh_sec", 90),
                                       ("journal_keep_sec", -1)])
def test_delivery_keys_are_validated(key, value):
    with pytest.raises(ConfigError, match=key):
        config.from_mapping({key: value})


def test_a_claim_whose_path_is_not_utf8_is_kept(tmp_path):
    """A data file name with an undecodable byte (surrogate-escaped) reaches the claim's path."""
    journal = Journal(str(tmp_path / "j.db"), keep_sec=60)
    ident = identity("/queue/A", b"z")
    claim = "/data/reduction_log/\udcff.nxs.h5.reduction.lease\nnonce"
    journal.confirmed(journal.accepted(ident, None), "/queue/DONE", claim)
    assert journal.take_unacked(ident)[1] == claim


def test_a_journal_of_another_version_is_refused_at_start_naming_the_key(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, identity TEXT, state TEXT, updated REAL)")
    db.close()
    with pytest.raises(ConfigError, match="journal_path.*another version.*claim"):
        Journal(path, 60)

"""Claims on a shared directory, as two hosts see them (real files, no locks)."""

import json
import os
import time

import pytest

from postprocessing.agent.claims import Claim, Claims, Watch
from postprocessing.config import Config
from postprocessing.safefiles import UnsafePath


def claims(host: str, pid: int, stale: float = 0.6) -> Claims:
    return Claims(Config(lease_stale_sec=stale, lease_refresh_sec=0.1), host, pid)


def test_one_claim_per_run_across_hosts_and_the_holder_gets_the_outcome(tmp_path):
    path = str(tmp_path / "reduction_log" / "CNCS_1.nxs.h5.reduction.lease")
    a, b = claims("host-a", 100), claims("host-b", 200)
    mine = a.claim(path, "q:abc")
    assert isinstance(mine, Claim)
    watch = b.claim(path, "q:abc")
    assert isinstance(watch, Watch) and (watch.host, watch.pid) == ("host-a", 100)
    assert b.check(watch) == "live"
    a.release(mine, "q:abc", "/queue/DONE", {"run_number": "1"})
    assert not os.path.exists(path)
    assert b.check(watch) == "done"
    assert b.outcome(path, watch.nonce) == {"nonce": mine.nonce, "request": "q:abc", "destination": "/queue/DONE",
                                            "body": {"run_number": "1"}, "host": "host-a", "resend": False}
    b.acked(path, watch.nonce)
    assert b.outcome(path, request="q:abc") is None, "an acked run's outcome would answer a repeated request"
    again = b.claim(path, "q:abc")
    assert isinstance(again, Claim), "a finished run's claim blocked a new request"


def test_a_done_file_answers_its_request_until_the_ack_is_confirmed(tmp_path):
    """The claimant died after its outcome was confirmed, before its ACK was: another agent answers."""
    path = str(tmp_path / "CNCS_9.nxs.h5.reduction.lease")
    a, b = claims("host-a", 100), claims("host-b", 200)
    mine = a.claim(path, "q:r")
    assert isinstance(mine, Claim)
    a.release(mine, "q:r", "/queue/DONE", {})
    assert b.outcome(path, request="q:other") is None
    assert b.outcome(path, request="q:r")["destination"] == "/queue/DONE"
    a.acked(path, "not-its-nonce")
    assert b.outcome(path, request="q:r") is not None, "another claim's ack cleared this outcome"


def test_a_request_sent_back_for_a_data_retry_is_not_an_answer(tmp_path):
    """A data retry's outcome is the request itself, back on its queue: a cancel still stands for it."""
    path = str(tmp_path / "reduction_log" / "CNCS_2.nxs.h5.reduction.lease")
    a = claims("host-a", 100)
    mine = a.claim(path, "q:first")
    assert isinstance(mine, Claim)
    a.release(mine, "q:first", "/queue/REDUCTION.DATA_READY", {"attempt": 2}, resend=True)
    a.acked(path, mine.nonce)
    assert a.answered_at(path) is None
    again = a.claim(path, "q:retry")
    assert isinstance(again, Claim)
    a.release(again, "q:retry", "/queue/DONE", {"run_number": "2"})
    assert a.answered_at(path) is not None


def test_a_lease_whose_heartbeat_stops_goes_stale_and_is_taken_over(tmp_path):
    path = str(tmp_path / "CNCS_2.nxs.h5.reduction.lease")
    a, b = claims("host-a", 100), claims("host-b", 200)
    mine = a.claim(path, "q:x")
    assert isinstance(mine, Claim)
    watch = b.claim(path, "q:x")
    assert isinstance(watch, Watch)
    deadline = time.monotonic() + 0.4
    while time.monotonic() < deadline:
        assert a.refresh(mine)
        time.sleep(0.05)
        assert b.check(watch) == "live", "a refreshed lease went stale"
    time.sleep(0.7)
    assert b.check(watch) == "stale"
    b.break_lease(watch)
    taken = b.claim(path, "q:x")
    assert isinstance(taken, Claim)
    assert not a.refresh(mine), "the old claimant did not notice that it lost its claim"


def test_a_dead_claimant_on_this_host_is_taken_over_at_once(tmp_path):
    path = str(tmp_path / "CNCS_3.nxs.h5.reduction.lease")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"host": "vm", "pid": 2 ** 22 + 12345, "nonce": "n"}, handle)
    assert isinstance(claims("vm", os.getpid(), stale=3600).claim(path, "q:y"), Claim)


def test_no_claim_through_a_planted_link(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.chmod(str(tmp_path), 0o777)  # users can write here, so a link here is theirs, not the facility's
    log_dir = tmp_path / "reduction_log"
    os.symlink(str(target), str(log_dir))
    with pytest.raises(UnsafePath):
        claims("h", 1).claim(str(log_dir / "r.lease"), "q")
    os.unlink(str(log_dir))
    log_dir.mkdir()
    os.symlink(str(target / "victim"), str(log_dir / "r.lease"))
    watch = claims("h", 1).claim(str(log_dir / "r.lease"), "q")
    assert isinstance(watch, Watch) and not (target / "victim").exists()


def test_old_done_files_are_pruned_when_a_run_is_claimed(tmp_path):
    old = tmp_path / "CNCS_4.nxs.h5.reduction.lease.done"
    new = tmp_path / "CNCS_5.nxs.h5.reduction.lease.done"
    other = tmp_path / "CNCS_4.nxs.h5.err"
    for path in (old, new, other):
        path.write_text("{}")
    for path in (old, other):
        os.utime(str(path), (1, 1))
    got = Claims(Config(journal_keep_sec=3600), "h", 1).claim(str(tmp_path / "CNCS_6.nxs.h5.reduction.lease"), "q")
    assert isinstance(got, Claim)
    assert not old.exists() and new.exists() and other.exists()

"""The run journal: a durable record, per agent, of the requests it settled.

Embedded SQLite (``journal_path``).  A run's outcome is recorded when the broker confirms
it; the record stays "maybe not acked" until the broker confirms the run's ACK too (ACK
frames carry a receipt).  Only such a record can answer a delivery without running it:
the first delivery of the same queue and body takes it (that delivery is the run's own
redelivery), and it is gone.  So a confirmed run is not executed again, even by a
restarted agent, while the same body sent again later is a new request and runs.

Settled records are kept ``journal_keep_sec`` (for cancels and for inspection), then pruned.
The instruments an operator paused (``postprocessing pause``) are kept here too, so that a
pause survives a restart.
"""

import hashlib
import logging
import os
import sqlite3
import time
from typing import Dict, List, Optional, Tuple

from postprocessing.agent.acks import LOST_ACK_WINDOW
from postprocessing.errors import ConfigError

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity TEXT NOT NULL,
    run_ref TEXT,
    state TEXT NOT NULL,
    destination TEXT,
    claim BLOB,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_identity ON runs (identity, state);
CREATE INDEX IF NOT EXISTS runs_updated ON runs (updated);
CREATE TABLE IF NOT EXISTS paused (
    instrument TEXT PRIMARY KEY,
    since REAL NOT NULL,
    by TEXT
);
"""

_COLUMNS = frozenset({"id", "identity", "run_ref", "state", "destination", "claim", "updated"})

#: A run's states in the journal.
ACCEPTED, RUNNING, UNACKED, ACKED, ANSWERED = "accepted", "running", "unacked", "acked", "answered"


def identity(queue: str, body: bytes) -> str:
    """What a request is, as far as the broker lets us tell: its queue and its body.

    Not the message id: Artemis and RabbitMQ give a redelivery a new one."""
    return "%s:%s" % (queue, hashlib.sha256(body).hexdigest())


class Journal:
    def __init__(self, path: str, keep_sec: float) -> None:
        self.keep_sec = keep_sec
        try:
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, mode=0o750, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: every commit survives the agent's crash (kill -9), which is the
            # failure the journal is for; a power cut may lose the last few (those runs rerun).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        except (OSError, sqlite3.Error) as err:
            raise ConfigError("journal_path", "cannot open the run journal %s: %s" % (path, err)) from None
        if not _COLUMNS <= columns:
            raise ConfigError("journal_path", "the run journal %s was written by another version (it lacks %s); "
                                              "move it aside" % (path, ", ".join(sorted(_COLUMNS - columns))))
        self._next_prune = 0.0
        # Whatever was accepted or running when the last agent stopped did not finish: its
        # message went back to the broker, and its next delivery runs it again.  The claims
        # those runs held (see Leases.release_abandoned) are for this agent to release.
        found = self._db.execute("SELECT claim FROM runs WHERE state IN (?, ?) AND claim IS NOT NULL",
                                 (ACCEPTED, RUNNING)).fetchall()
        self.abandoned_claims: List[str] = [bytes(row[0]).decode("utf-8", "surrogateescape") for row in found]
        self._db.execute("UPDATE runs SET state = ?, claim = NULL WHERE state IN (?, ?)",
                         ("abandoned", ACCEPTED, RUNNING))

    def close(self) -> None:
        self._db.close()

    def accepted(self, ident: str, run_ref: Optional[str]) -> int:
        cur = self._db.execute("INSERT INTO runs (identity, run_ref, state, updated) VALUES (?, ?, ?, ?)",
                               (ident, run_ref, ACCEPTED, time.time()))
        return int(cur.lastrowid or 0)

    def set_ref(self, row: int, run_ref: str) -> None:
        """What a cancel would name the run by (see cancels.run_ref)."""
        self._db.execute("UPDATE runs SET run_ref = ? WHERE id = ?", (run_ref, row))

    def running(self, row: int, claim: Optional[str] = None) -> None:
        """The run's job starts; ``claim`` references the claim it holds on the shared filesystem."""
        raw = claim.encode("utf-8", "surrogateescape") if claim is not None else None
        self._db.execute("UPDATE runs SET state = ?, claim = ?, updated = ? WHERE id = ?",
                         (RUNNING, raw, time.time(), row))

    def confirmed(self, row: int, destination: str, claim: Optional[str] = None, answered: bool = True) -> None:
        """The run's outcome is safe at the broker; its ack is not confirmed yet.

        ``claim`` names the done file the outcome left on the shared filesystem (claims.py); it
        is a path, kept as bytes (a file name need not be valid UTF-8).  ``answered`` False: the
        outcome sent the request back for a later attempt, so no cancel finds the run settled."""
        raw = claim.encode("utf-8", "surrogateescape") if claim is not None else None
        self._db.execute("UPDATE runs SET state = ?, destination = ?, claim = ?, updated = ?, "
                         "run_ref = CASE WHEN ? THEN run_ref END WHERE id = ?",
                         (UNACKED, destination, raw, time.time(), answered, row))

    def acked(self, row: int) -> None:
        """The broker confirmed the run's ACK: nothing of it can come back."""
        self._set(row, ACKED)

    def forget(self, row: int) -> None:
        """The run went back to the broker before it ran."""
        self._db.execute("DELETE FROM runs WHERE id = ?", (row,))

    def take_unacked(self, ident: str, sent_ms: Optional[int] = None) -> Optional[Tuple[int, Optional[str]]]:
        """A confirmed run with this identity whose ack may be lost, and its claim: taken, and gone.

        ``sent_ms``: when the broker stamped the message (None: unknown).  A message stamped more
        than ``LOST_ACK_WINDOW`` after a run's outcome was confirmed is a later request, not that run's."""
        since = None if sent_ms is None else sent_ms / 1000.0 - LOST_ACK_WINDOW
        found = self._db.execute(
            "SELECT id, claim FROM runs WHERE identity = ? AND state = ? AND (? IS NULL OR updated >= ?) "
            "ORDER BY id LIMIT 1", (ident, UNACKED, since, since)).fetchone()
        if found is None:
            return None
        self._set(int(found[0]), ANSWERED)
        claim = bytes(found[1]).decode("utf-8", "surrogateescape") if found[1] is not None else None
        return int(found[0]), claim

    def settled_since(self, run_ref: str, since: float) -> bool:
        """Whether a run with this reference settled (outcome confirmed) after ``since`` (wall clock)."""
        found = self._db.execute(
            "SELECT 1 FROM runs WHERE run_ref = ? AND state IN (?, ?, ?) AND updated >= ? LIMIT 1",
            (run_ref, UNACKED, ACKED, ANSWERED, since)).fetchone()
        return found is not None

    def prune(self) -> int:
        """Drop settled records older than ``keep_sec``; at most once a minute."""
        now = time.time()
        if now < self._next_prune:
            return 0
        self._next_prune = now + 60.0
        cur = self._db.execute("DELETE FROM runs WHERE state != ? AND updated < ?",
                               (UNACKED, now - self.keep_sec))
        # An unacked record whose redelivery never came (the ack did arrive, only its receipt
        # was lost) is kept longer, but not for ever.
        cur2 = self._db.execute("DELETE FROM runs WHERE state = ? AND updated < ?",
                                (UNACKED, now - 10 * self.keep_sec))
        return cur.rowcount + cur2.rowcount

    # -- paused instruments --------------------------------------------------------------
    def paused(self) -> Dict[str, Tuple[float, Optional[str]]]:
        """Instrument -> (since, wall clock; who paused it) of every paused instrument."""
        return {str(inst): (float(since), by) for inst, since, by in
                self._db.execute("SELECT instrument, since, by FROM paused")}

    def pause(self, instrument: str, by: Optional[str]) -> None:
        self._db.execute("INSERT OR IGNORE INTO paused (instrument, since, by) VALUES (?, ?, ?)",
                         (instrument, time.time(), by))

    def unpause(self, instrument: str) -> None:
        self._db.execute("DELETE FROM paused WHERE instrument = ?", (instrument,))

    def _set(self, row: int, state: str) -> None:
        self._db.execute("UPDATE runs SET state = ?, updated = ? WHERE id = ?", (state, time.time(), row))

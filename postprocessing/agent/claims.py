"""Claims on the shared filesystem: which agent, on which host, runs a reduction now.

A claim is a lease file in the run's ``reduction_log/`` directory (see layout.py), named
after the data file and the processor: ``<data file>.<processor>.lease``.  It is created
with ``O_CREAT | O_EXCL`` (atomic on NFS v3 and later; no flock, which NFS does not share
across hosts), and holds the claimant's host, pid, a nonce and the request's identity.
Its heartbeat is its modification time, which the claimant moves every
``lease_refresh_sec`` while the job runs.

Staleness is judged by the waiting agent with its own monotonic clock: a lease whose
modification time has not changed for ``lease_stale_sec`` while it watched is stale, so
clocks need not agree between hosts.  A lease of a dead process on this same host is
stale at once.

Once the run's message is acked, the done file becomes ``<lease>.settled``: when the run was
last answered, which tells a late cancel from one for a request still queued (cancelling.py).

An agent that holds a run for its claimant and has a cancel for it (the claimant missed the
cancel, for example while partitioned from the broker) hands the cancel over in
``<lease>.cancel`` (the claim's nonce and who cancelled); the claimant reads it when it
refreshes its lease and stops the job.

When the claimant's outcome is confirmed by the broker it writes ``<lease>.done`` (its
nonce, the request's identity, the outcome's destination and body), then removes the lease.
The done file says "outcome confirmed, message maybe not acked": whoever acks the run's
message with a confirmed ACK removes it.  Until then it answers the run's message wherever it
is delivered: an agent that holds it settles it from the file, and an agent that receives it
later (the claimant died before its ACK was confirmed) finds the file instead of a lease and
settles it too, without running it again.  Because the file comes before the lease goes, an
agent that wins a claim looks for it once more (it may have looked just before the claimant
answered) and withdraws the claim if it is there.

Writes never follow a planted symbolic link: the lease and done files are created with
``O_EXCL | O_NOFOLLOW``, and the directory itself must not be a link.
"""

import dataclasses
import errno
import json
import logging
import os
import socket
import time
import uuid
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import psutil

from postprocessing import layout
from postprocessing.config import Config
from postprocessing.messages import RunRequest
from postprocessing.safefiles import UnsafePath, make_dirs

logger = logging.getLogger(__name__)

_MAX_LEASE_BYTES = 65536
_PRUNE_EVERY = 3600.0


@dataclasses.dataclass
class Claim:
    """A lease this agent holds."""

    path: str
    nonce: str
    #: When the heartbeat last moved (monotonic).
    refreshed: float


@dataclasses.dataclass
class Watch:
    """A lease held by someone else, as this agent has seen it."""

    path: str
    host: str
    pid: int
    nonce: str
    mtime: float
    #: Since when (monotonic) the lease has looked like this.
    since: float


def lease_path(config: Config, payload: Any, processor: str) -> Optional[str]:
    """Where the claim of a run lives; None for work that is not a run's reduction."""
    if not isinstance(payload, RunRequest):
        return None
    out_dir = layout.output_dir(config, payload.facility, payload.instrument, payload.ipts)
    base = os.path.basename(payload.data_file)
    return os.path.join(out_dir, "reduction_log", "%s.%s.lease" % (base, processor))


class Claims:
    def __init__(self, config: Config, hostname: str, pid: int) -> None:
        self.config = config
        self.host = hostname or socket.gethostname()
        self.pid = pid
        #: directory -> when its old done files were last pruned (monotonic).
        self._pruned: Dict[str, float] = {}

    # -- the claimant --------------------------------------------------------------------
    def claim(self, path: str, request: str) -> Union[Claim, Watch]:
        """Claim ``path`` for ``request``; a Watch of the current claimant if another holds it.

        Raises OSError (or UnsafePath) when the directory cannot be used."""
        directory = os.path.dirname(path)
        # Walked from the data root: a link a proposal's users planted is refused, not followed.
        make_dirs(directory, self.config.data_root)
        nonce = uuid.uuid4().hex
        body = json.dumps({"host": self.host, "pid": self.pid, "nonce": nonce, "request": request,
                           "since": time.time()}).encode()
        for _ in range(3):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644)
            except FileExistsError:
                watch = self.look(path)
                if watch is None:
                    continue  # it went away meanwhile: try again
                if not self.dead_here(watch):
                    return watch
                logger.info("claim %s: its claimant (pid %d on this host) is dead; taking over", path, watch.pid)
                self.break_lease(watch)
                continue
            try:
                os.write(fd, body)
            finally:
                os.close(fd)
            self._prune_done(path)
            return Claim(path, nonce, time.monotonic())
        watch = self.look(path)
        if watch is None:
            raise OSError(errno.EAGAIN, "lease keeps changing", path)
        return watch

    def refresh(self, claim: Claim) -> bool:
        """Move the heartbeat; False once the claim is lost (taken over, or unreachable too long)."""
        now = time.monotonic()
        try:
            current = self._read(claim.path)
            if current is None or current.get("nonce") != claim.nonce:
                logger.warning("claim %s was taken over by %s", claim.path, _who(current))
                return False
            os.utime(claim.path, follow_symlinks=False)
        except OSError as err:
            if now - claim.refreshed > self.config.lease_stale_sec - self.config.lease_refresh_sec:
                logger.warning("claim %s could not be refreshed for %.0f s (%s): giving it up", claim.path,
                               now - claim.refreshed, err)
                return False
            logger.info("claim %s not refreshed (%s); trying again", claim.path, err)
            return True
        claim.refreshed = now
        return True

    def release(self, claim: Claim, request: str, destination: str, body: Optional[Mapping[str, Any]],
                resend: bool = False) -> None:
        """The run's outcome is confirmed: leave it for whoever gets the run's message, drop the lease.

        ``resend``: the outcome sends the request back for a later attempt, which answers nothing."""
        try:
            done = json.dumps({"nonce": claim.nonce, "request": request, "destination": destination,
                               "body": body, "host": self.host, "resend": resend}).encode()
            fresh = "%s.%s" % (self.done_path(claim.path), claim.nonce)
            fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644)
            try:
                os.write(fd, done)
            finally:
                os.close(fd)
            os.rename(fresh, self.done_path(claim.path))  # replaces a link there, never follows it
            current = self._read(claim.path)
            if current is not None and current.get("nonce") == claim.nonce:
                os.unlink(claim.path)
            if self.cancel_asked(claim) is not None:
                os.unlink(self.cancel_path(claim.path))
        except (OSError, UnsafePath) as err:
            logger.warning("could not release claim %s: %s", claim.path, err)

    def withdraw(self, claim: Claim) -> None:
        """Drop a claim whose run turned out to be answered already: no answer of ours is left."""
        try:
            current = self._read(claim.path)
            if current is not None and current.get("nonce") == claim.nonce:
                os.unlink(claim.path)
        except OSError as err:
            logger.warning("could not withdraw claim %s: %s", claim.path, err)

    def cancel_asked(self, claim: Claim) -> Optional[str]:
        """Who cancelled this claim's run through its cancel file, if anybody did."""
        data = self._read(self.cancel_path(claim.path))
        if data is None or data.get("nonce") != claim.nonce:
            return None
        return str(data.get("who") or "another agent")

    # -- the holder ----------------------------------------------------------------------
    def ask_cancel(self, watch: Watch, who: str) -> bool:
        """Hand a cancel to the claimant of ``watch``; False if it cannot be written."""
        body = json.dumps({"nonce": watch.nonce, "who": who, "host": self.host}).encode()
        fresh = "%s.%s" % (self.cancel_path(watch.path), uuid.uuid4().hex)
        try:
            fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644)
            try:
                os.write(fd, body)
            finally:
                os.close(fd)
            os.rename(fresh, self.cancel_path(watch.path))
        except OSError as err:
            logger.warning("could not hand the cancel of %s to its claimant: %s", watch.path, err)
            return False
        return True

    def look(self, path: str) -> Optional[Watch]:
        """The lease at ``path`` as it is now; None if there is none."""
        try:
            mtime = os.stat(path, follow_symlinks=False).st_mtime
            data = self._read(path)
        except FileNotFoundError:
            return None
        data = data or {}
        pid = data.get("pid")
        return Watch(path, str(data.get("host", "")), pid if isinstance(pid, int) else 0,
                     str(data.get("nonce", "")), mtime, time.monotonic())

    def check(self, watch: Watch) -> str:
        """What became of a watched lease: "done", "live", "stale" or "gone"."""
        if self.outcome(watch.path, watch.nonce) is not None:
            return "done"
        current = self.look(watch.path)
        if current is None:
            return "done" if self.outcome(watch.path, watch.nonce) is not None else "gone"
        if current.nonce != watch.nonce or current.mtime != watch.mtime:
            watch.nonce, watch.mtime, watch.since = current.nonce, current.mtime, current.since
            watch.host, watch.pid = current.host, current.pid
            return "live"
        if self.dead_here(watch) or time.monotonic() - watch.since >= self.config.lease_stale_sec:
            return "stale"
        return "live"

    def outcome(self, path: str, nonce: Optional[str] = None,
                request: Optional[str] = None) -> Optional[Dict[str, Any]]:
        """The confirmed outcome left beside lease ``path`` (of claim ``nonce``, or of ``request``)."""
        data = self._read(self.done_path(path))
        if not data or not isinstance(data.get("destination"), str):
            return None
        if nonce is not None and data.get("nonce") != nonce:
            return None
        if request is not None and data.get("request") != request:
            return None
        return data

    def done_at(self, path: str) -> Optional[float]:
        """When the outcome in the done file beside lease ``path`` was confirmed (wall clock)."""
        try:
            return os.stat(self.done_path(path), follow_symlinks=False).st_mtime
        except OSError:
            return None

    def acked(self, path: str, nonce: str) -> None:
        """The run's message is acked for good (receipt): its done file has nothing more to answer.

        It becomes ``<lease>.settled``, whose modification time says when the run was last
        answered (see :meth:`answered_at`)."""
        try:
            if self.outcome(path, nonce) is not None:
                os.replace(self.done_path(path), self.settled_path(path))
        except OSError as err:
            logger.warning("could not settle %s: %s", self.done_path(path), err)

    def settled(self, path: str, request: str) -> Optional[Tuple[Dict[str, Any], float]]:
        """The outcome of ``request`` whose ACK was confirmed (its settled file), and when that was
        (the file's change time: the rename at the ACK's receipt)."""
        data = self._read(self.settled_path(path))
        if not data or data.get("request") != request or not isinstance(data.get("destination"), str):
            return None
        try:
            return data, os.stat(self.settled_path(path), follow_symlinks=False).st_ctime
        except OSError:
            return None

    def answered_at(self, path: str) -> Optional[float]:
        """When the run of lease ``path`` was last answered (outcome confirmed), by any agent (wall clock).

        A request sent back for a later attempt (a data retry) is not an answer."""
        times = []
        for answer in (self.done_path(path), self.settled_path(path)):
            try:
                data = self._read(answer)
                if data and data.get("resend") is not True:
                    times.append(os.stat(answer, follow_symlinks=False).st_mtime)
            except OSError:
                continue
        return max(times) if times else None

    def break_lease(self, watch: Watch) -> None:
        """Remove a stale lease, unless it changed meanwhile (then it is left alone)."""
        aside = "%s.stale-%s" % (watch.path, uuid.uuid4().hex)
        try:
            os.rename(watch.path, aside)
        except FileNotFoundError:
            return
        moved = self._read(aside)
        if moved is not None and moved.get("nonce") != watch.nonce:
            try:
                os.link(aside, watch.path)  # a fresh lease: put it back, never over a newer one
            except OSError as err:
                logger.warning("lease %s changed while it was taken over: %s", watch.path, err)
        os.unlink(aside)

    @staticmethod
    def done_path(path: str) -> str:
        return path + ".done"

    @staticmethod
    def settled_path(path: str) -> str:
        return path + ".settled"

    @staticmethod
    def cancel_path(path: str) -> str:
        return path + ".cancel"

    # -- helpers -------------------------------------------------------------------------
    def dead_here(self, watch: Watch) -> bool:
        """Whether the lease belongs to a process of this host that is gone."""
        if watch.host != self.host or watch.pid <= 0 or watch.pid == self.pid:
            return False
        return not psutil.pid_exists(watch.pid)

    def _prune_done(self, path: str) -> None:
        """Remove done and settled files older than ``journal_keep_sec`` beside ``path``; once an hour per directory."""
        directory = os.path.dirname(path)
        now = time.monotonic()
        if now - self._pruned.get(directory, -_PRUNE_EVERY) < _PRUNE_EVERY:
            return
        self._pruned[directory] = now
        cutoff = time.time() - self.config.journal_keep_sec
        try:
            for entry in os.scandir(directory):
                if (".lease.done" in entry.name or entry.name.endswith(".lease.settled")) \
                        and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
        except OSError as err:
            logger.debug("pruning done files beside %s: %s", path, err)

    @staticmethod
    def _read(path: str) -> Optional[Dict[str, Any]]:
        """A small JSON file, not through a link; None if it is missing or unreadable."""
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno == errno.ELOOP:
                return None
            raise
        try:
            raw = os.read(fd, _MAX_LEASE_BYTES)
        finally:
            os.close(fd)
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError:
            return None
        return data if isinstance(data, dict) else None


def _who(data: Optional[Mapping[str, Any]]) -> str:
    return "%s pid %s" % (data.get("host"), data.get("pid")) if data else "nobody"


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

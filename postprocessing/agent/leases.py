"""The agent's side of the claims: claim a run before it starts, keep the claims fresh, and
watch the runs held for another agent until they are answered or their claim dies.

It changes runs' states; the loop (agent.py) settles and starts them.
"""

import logging
import time
from typing import Collection, Iterable, List, Optional, Tuple

from postprocessing import logsafe
from postprocessing.agent.acks import LOST_ACK_WINDOW
from postprocessing.agent.claims import Claim, Claims, lease_path
from postprocessing.agent.runs import Run, RunState, RunTable
from postprocessing.config import Config
from postprocessing.safefiles import UnsafePath

logger = logging.getLogger(__name__)


def sent_by(sent_ms: Optional[int], when: float) -> bool:
    """Whether a message the broker stamped ``sent_ms`` (None: unknown) may have been sent by
    ``when`` (wall clock), allowing ``LOST_ACK_WINDOW`` for the broker's clock.  A message
    whose ACK the broker forgot was sent before it was answered; one stamped later is a later
    request."""
    return sent_ms is None or sent_ms / 1000.0 <= when + LOST_ACK_WINDOW


class Leases:
    def __init__(self, config: Config, claims: Claims) -> None:
        self.config = config
        self.claims = claims
        #: When to refresh claims and look at held runs again.
        self.due: Optional[float] = None

    def claimed(self, run: Run, acking: Collection[Tuple[str, str]] = (),
                forgotten_before: Optional[float] = None) -> Optional[str]:
        """Claim a reduction before it runs.

        Returns None to run it; "held" when another agent runs it (the run is then HELD); or
        the destination of the outcome a claimant already confirmed for this very message,
        whose ACK was never confirmed (the run is to be settled without running).  ``acking``:
        the done files of runs whose ACK is on its way on the live connection; the broker is
        not redelivering those, so a run that matches one is a new request.
        ``forgotten_before``: for a redelivery on a broker that forgets ACKs it confirmed just
        before a SIGKILL (RabbitMQ), when the previous connection dropped: a run whose ACK some
        agent confirmed within ``LOST_ACK_WINDOW`` before that, and which nobody claimed since,
        is that forgotten message (settled without running)."""
        assert run.work is not None and run.processor is not None
        if run.claim is not None or not run.processor.cancellable or self.config.communication_only:
            return None
        path = lease_path(self.config, run.work.payload, run.processor.name)
        if path is None:
            return None
        try:
            answer = self._answered(run, path, acking, forgotten_before)
            if answer is not None:
                return answer
            got = self.claims.claim(path, run.identity)
        except (OSError, UnsafePath) as err:
            logger.warning("[%s] cannot claim %s (%s): running it unclaimed", run.label, path, err)
            return None
        if isinstance(got, Claim):
            answer = self._answered_meanwhile(run, got, acking)
            if answer is not None:
                return answer
            run.claim = got
            run.done_ref = (got.path, got.nonce)
        else:
            logger.info("[%s] held: %s pid %d runs it (%s)", run.label, got.host or "?", got.pid, path)
            run.state, run.watch = RunState.HELD, got
        if self.due is None:
            self.due = time.monotonic() + self.config.lease_refresh_sec
        return None if run.claim is not None else "held"

    def _answered(self, run: Run, path: str, acking: Collection[Tuple[str, str]],
                  forgotten_before: Optional[float]) -> Optional[str]:
        done = self.claims.outcome(path, request=run.identity)
        ours = (path, str(done.get("nonce"))) in acking if done is not None else False
        if done is not None and not ours and self.claims.look(path) is None and self._sent_by_answer(run, path):
            logger.info("[%s] %s confirmed its outcome (%s) but not its ack: settling without running it",
                        run.label, done.get("host"), done["destination"])
            run.done_ref = (path, str(done.get("nonce")))
            return str(done["destination"])
        settled = self.claims.settled(path, run.identity) if forgotten_before is not None else None
        if (settled is not None and forgotten_before is not None and self.claims.look(path) is None
                and forgotten_before - LOST_ACK_WINDOW <= settled[1] <= forgotten_before
                and sent_by(run.delivery.broker_time_ms, settled[1])):
            logger.info("[%s] %s answered it (%s) and its ack was confirmed just before the broker went "
                        "away, which forgot that ack: settling without running it", run.label,
                        settled[0].get("host"), settled[0]["destination"])
            return str(settled[0]["destination"])
        return None

    def _sent_by_answer(self, run: Run, path: str) -> bool:
        """Whether the run's message may be the one the done file beside ``path`` answered: sent
        before that answer.  One the broker stamped later (not RabbitMQ without its timestamp
        interceptor) is a later request with the same body, which runs even while the answered
        message's ACK is unconfirmed."""
        answered = self.claims.done_at(path)
        return answered is None or sent_by(run.delivery.broker_time_ms, answered)

    def _answered_meanwhile(self, run: Run, claim: Claim, acking: Collection[Tuple[str, str]]) -> Optional[str]:
        """A claimant writes its answer, then drops its lease: between our look for an answer and
        our claim it may have done both.  So once the claim is ours, look again; if the run was
        answered meanwhile, withdraw the claim and settle the message from that answer."""
        done = self.claims.outcome(claim.path, request=run.identity)
        if done is None or done.get("nonce") == claim.nonce or (claim.path, str(done.get("nonce"))) in acking:
            return None
        if not self._sent_by_answer(run, claim.path):
            return None
        self.claims.withdraw(claim)
        logger.info("[%s] %s answered it (%s) as this agent claimed it: settling without running it",
                    run.label, done.get("host"), done["destination"])
        run.done_ref = (claim.path, str(done.get("nonce")))
        return str(done["destination"])

    def tick(self, runs: RunTable) -> Tuple[List[Tuple[Run, str]], bool]:
        """Refresh our claims (of runs running, or whose outcome waits for the broker) and look
        at held runs.

        Returns the held runs their claimant answered (with the outcome's destination), to
        settle, and whether a held run is free to run here now (back to WAITING)."""
        self.due = None
        answered: List[Tuple[Run, str]] = []
        freed = False
        for run in runs:
            if run.claim is not None and run.state is RunState.FINISHING and not run.claim_lost:
                if not self.claims.refresh(run.claim):
                    run.claim_lost = True
                    logger.warning("[%s] its claim was taken over while its outcome waited for the broker",
                                   run.label)
            elif run.claim is not None and run.state is RunState.RUNNING and not run.claim_lost:
                if not self.claims.refresh(run.claim) and run.ctx is not None:
                    run.claim_lost = True
                    run.ctx.cancel("its claim was lost")
                    continue
                who = self.claims.cancel_asked(run.claim)
                if who is not None and run.ctx is not None and not run.ctx.cancelled_by:
                    logger.info("[%s] cancelled by %s (handed over by another agent)", run.label, who)
                    run.ctx.cancel(who)
            elif run.state is RunState.HELD and run.watch is not None:
                destination = self._look(run)
                if destination is not None:
                    answered.append((run, destination))
                freed = freed or run.state is RunState.WAITING
        if any(r.watch is not None or (r.claim is not None and r.state in (RunState.RUNNING, RunState.FINISHING))
               for r in runs):
            self.due = time.monotonic() + self.config.lease_refresh_sec
        return answered, freed

    def touched_since(self, path: str, since: float) -> bool:
        """Whether run lease ``path`` was claimed, or answered, by anyone after ``since`` (wall clock)."""
        if not path:
            return False
        try:
            return self.claims.look(path) is not None or (self.claims.answered_at(path) or 0.0) > since
        except (OSError, UnsafePath):
            return False

    def answered_at(self, run: Run) -> Optional[float]:
        """When this run (any request of it) was last answered by any agent, if known (wall clock)."""
        assert run.work is not None and run.processor is not None
        path = lease_path(self.config, run.work.payload, run.processor.name) if run.processor.cancellable else None
        return self.claims.answered_at(path) if path is not None else None

    def hand_cancel(self, run: Run, who: str) -> bool:
        """A cancel met a run that another live agent runs: hand it over and hold the run for that
        agent's outcome.  False when nobody else runs it (the cancel is this agent's to answer)."""
        assert run.work is not None and run.processor is not None
        if not run.processor.cancellable or self.config.communication_only:
            return False
        path = lease_path(self.config, run.work.payload, run.processor.name)
        try:
            watch = self.claims.look(path) if path is not None else None
            if watch is None or self.claims.check(watch) != "live" or not self.claims.ask_cancel(watch, who):
                return False
        except (OSError, UnsafePath):
            return False
        logger.info("[%s] cancelled by %s while %s pid %d runs it: the cancel goes to that agent", run.label,
                    who, watch.host or "?", watch.pid)
        run.state, run.watch, run.cancelled_by = RunState.HELD, watch, who
        if self.due is None:
            self.due = time.monotonic() + self.config.lease_refresh_sec
        return True

    @staticmethod
    def ref(run: Run) -> Optional[str]:
        """The journal's reference to the claim ``run`` holds (None: it holds none)."""
        return "%s\n%s" % (run.claim.path, run.claim.nonce) if run.claim is not None else None

    def release_abandoned(self, refs: Iterable[str]) -> None:
        """Remove the claims of runs this host's previous agent was running when it died.

        The copies of those runs the broker gave to agents on other hosts are held for the
        claims; released now, they run there at once instead of after ``lease_stale_sec``.
        A claim that changed hands, or whose process lives, is left alone."""
        for ref in refs:
            path, _sep, nonce = ref.partition("\n")
            try:
                watch = self.claims.look(path)
                if watch is None or watch.nonce != nonce or not self.claims.dead_here(watch):
                    continue
                logger.info("releasing the claim %s of pid %d, this host's agent before a restart",
                            logsafe.text(path), watch.pid)
                self.claims.break_lease(watch)
            except (OSError, UnsafePath) as err:
                logger.warning("could not release the claim %s: %s", logsafe.text(path), err)

    def release(self, run: Run, destination: str, body: object, resend: bool = False) -> Optional[str]:
        """The run's outcome (``resend``: its request sent back for a later attempt) is confirmed:
        leave it beside the lease; returns the journal's claim reference."""
        if run.claim is None:
            return None
        self.claims.release(run.claim, run.identity, destination, body if isinstance(body, dict) else None, resend)
        return self.ref(run)

    def still_unacked(self, claim_ref: Optional[str]) -> Optional[Tuple[str, str]]:
        """For a journal record: its done file, if nobody has acked its message since (None: gone).

        Without a claim reference (an unclaimed run) the journal alone answers: ("", "")."""
        if not claim_ref:
            return "", ""
        path, _sep, nonce = claim_ref.partition("\n")
        return (path, nonce) if self.claims.outcome(path, nonce) is not None else None

    def acked(self, done_ref: Optional[Tuple[str, str]]) -> None:
        """The run's message is acked for good: its done file answers nothing more."""
        if done_ref is not None and done_ref[0]:
            self.claims.acked(*done_ref)

    def _look(self, run: Run) -> Optional[str]:
        """A held run: the destination of its claimant's outcome once out; or free it if the claim died."""
        assert run.watch is not None
        state = self.claims.check(run.watch)
        if state == "done":
            done = self.claims.outcome(run.watch.path, run.watch.nonce)
            destination = str(done["destination"]) if done else ""
            run.done_ref = (run.watch.path, run.watch.nonce)
            logger.info("[%s] %s answered it (%s): settling without running it", run.label, run.watch.host,
                        destination or "outcome unreadable")
            return destination
        if state != "live":
            logger.warning("[%s] the claim of %s pid %d is %s: taking the run over", run.label,
                           run.watch.host, run.watch.pid, state)
            if state == "stale":
                self.claims.break_lease(run.watch)
            run.state, run.watch, run.waiting_since = RunState.WAITING, None, time.monotonic()
        return None

"""The agent's loop: the one place that dispatches messages, sends and acknowledges.

Everything that happens reaches the loop as an event in its inbox: deliveries, receipts
and disconnects from the transport's receiver thread, messages and results from job
threads, and stop requests from signal handlers.  A run message is acked only after the
broker has confirmed its outcome (receipt), and only here, in :meth:`Agent._settle`.

The loop's parts live beside it: the run table (runs.py), the broker link (link.py),
holding and admission (holding.py), subscriptions, the outbox and cancellation.
"""

import itertools
import logging
import os
import queue
import threading
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from postprocessing import logsafe, messages
from postprocessing.agent.acks import AckBook
from postprocessing.agent.cancelling import CancelDesk
from postprocessing.agent.cancels import parse_cancel, run_ref
from postprocessing.agent.claims import Claims
from postprocessing.agent.control import ControlDesk
from postprocessing.agent.events import JobDone, Publish, Stop
from postprocessing.agent.heartbeat import heartbeat_body
from postprocessing.agent.holding import Holding
from postprocessing.agent.jobthread import job_logger, publisher, start_job
from postprocessing.agent.journal import Journal, identity
from postprocessing.agent.leases import Leases, sent_by
from postprocessing.agent.link import BrokerLink
from postprocessing.agent.observer import Observer
from postprocessing.agent.outbox import Outbox
from postprocessing.agent.ping import PingPolicy, answer_ping, own_destinations
from postprocessing.agent.runs import Run, RunState, RunTable
from postprocessing.agent.status import StatusBoard
from postprocessing.agent.subscriptions import Subscriptions
from postprocessing.config import Config
from postprocessing.errors import InvalidMessage, NotConnected
from postprocessing.jobs.slots import Slots
from postprocessing.processors.base import JobContext, Outcome, Processor
from postprocessing.transport import Delivery, Disconnected, Receipt, SendRefused, Sink, Transport
from postprocessing.transport.validated import validated_user

logger = logging.getLogger(__name__)

_PING_SUB = "pp-ping"
_CANCEL_SUB = "pp-cancel"
_FANOUT_SUB = "pp-cancel-fanout"
_CONTROL_SUB = "pp-fleet-control"
#: After a (re)connect, how long a full agent keeps subscriptions open for the redeliveries of
#: the jobs it still runs (a broker hands returned messages out again at once).
_REJOIN_WINDOW = 10.0


class Agent:
    def __init__(self, config: Config, processors: Sequence[Processor], hostname: str,
                 transport_factory: Callable[[Sink], Transport], job_env: Mapping[str, str],
                 observer: Optional[Observer] = None) -> None:
        self.config = config
        self.observer = observer or Observer()
        self.hostname = hostname
        self.pid = os.getpid()
        self.inbox: queue.Queue[object] = queue.Queue()
        self.transport = transport_factory(self.inbox.put)
        self.link = BrokerLink(config, self.transport)
        self.processors = {p.queue: p for p in processors}
        self.subs = Subscriptions(self.transport, list(self.processors))
        self.outbox = Outbox(self.transport, config.reconnect_initial_sec)
        self.slots = Slots(config.max_procs, config.jobs_per_instrument, config.serialize_per_proposal)
        self.holding = Holding(config)
        self.job_env = dict(job_env)
        self.runs = RunTable()
        self.journal = Journal(config.journal_path, config.journal_keep_sec)
        self.cancel_desk = CancelDesk(config, hostname, self.transport, self.journal)
        self.leases = Leases(config, Claims(config, hostname, self.pid))
        self.leases.release_abandoned(self.journal.abandoned_claims)
        self._keys = itertools.count(1)
        self.acks = AckBook()
        self.stopping = False
        self._stop_deadline: Optional[float] = None
        self._rejoin_until: Optional[float] = None
        self._next_heartbeat = 0.0
        self._last_activity = time.monotonic()
        self.ping_policy = PingPolicy(own_destinations(config) + list(self.processors))
        self.status = StatusBoard(config, hostname, self.pid, self.transport)
        self.control = ControlDesk(config, hostname, self.pid, self.transport, self.journal, self.holding,
                                   self.ping_policy)

    @property
    def connected(self) -> bool:
        return self.link.connected

    # -- public ------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop (safe from a signal handler: the put runs on its own thread)."""
        threading.Thread(target=self.inbox.put, args=(Stop(reason),), daemon=True).start()

    def run(self) -> int:
        """Run until stopped; returns the process exit status."""
        logger.info("agent starting on %s (pid %d), queues: %s", self.hostname, self.pid,
                    ", ".join(self.processors))
        self.observer.control_state(self.holding.draining, self.holding.paused)
        while not self.run_once():
            pass
        if self.connected:
            self._status(force=True, stopped=True)
        self.transport.disconnect()
        self.journal.close()
        logger.info("agent stopped")
        return 0

    def run_once(self, max_wait: Optional[float] = None) -> bool:
        """Fire due timers, then handle at most one event; True once a stop has completed."""
        now = time.monotonic()
        if not self.connected and now >= self.link.next_connect:
            self._connect()
        if self.connected and now >= self._next_heartbeat:
            self._heartbeat()
        failback = self._failback_due()
        if failback is not None and now >= failback:
            self._failback()
        if self.holding.next_admission is not None and now >= self.holding.next_admission:
            self._admit()
        hold = self.holding.deadline(self.runs, self._full_hold())
        if hold is not None and now >= hold:
            self._release_held(now)
        if self._rejoin_until is not None and now >= self._rejoin_until:
            self._rejoin_until = None
            self._reconcile()
        if self.leases.due is not None and now >= self.leases.due:
            self._leases()
        retry = self.outbox.next_retry()
        if self.connected and retry is not None and now >= retry:
            self.outbox.retry(now)
        if self.connected:
            self._status()
        if self.stopping and self._finished(now):
            return True
        wait = self._wait_time() if max_wait is None else min(max_wait, self._wait_time())
        try:
            event = self.inbox.get(timeout=wait)
        except queue.Empty:
            return False
        self._handle(event)
        return False

    # -- the loop's helpers --------------------------------------------------------------
    def _wait_time(self) -> float:
        now = time.monotonic()
        deadlines = [self._next_heartbeat if self.connected else self.link.next_connect]
        for deadline in (self.holding.next_admission, self.holding.deadline(self.runs, self._full_hold()),
                         self._failback_due(),
                         self._stop_deadline, self.outbox.next_retry() if self.connected else None,
                         self.leases.due, self._rejoin_until, self.status.due if self.connected else None):
            if deadline is not None:
                deadlines.append(deadline)
        return max(0.0, min(deadlines) - now)

    def _finished(self, now: float) -> bool:
        if self.runs.count(RunState.RUNNING):
            return False
        if self._stop_deadline is None:
            self._stop_deadline = now + self.config.shutdown_timeout_sec
        if not len(self.runs) and not len(self.outbox):
            return True
        if now >= self._stop_deadline:
            logger.warning("stopping with %d unconfirmed messages; their runs will be redelivered",
                           len(self.outbox))
            return True
        return False

    def _handle(self, event: object) -> None:
        if isinstance(event, Delivery):
            self._on_delivery(event)
        elif isinstance(event, Receipt):
            self._on_receipt(event)
        elif isinstance(event, SendRefused):
            self._on_refused(event)
        elif isinstance(event, Publish):
            self.outbox.send(event.destination, messages.encode(event.body))
            event.sent.set()
        elif isinstance(event, JobDone):
            self._on_job_done(event)
        elif isinstance(event, Disconnected):
            self._on_disconnected(event)
        elif isinstance(event, Stop):
            self._on_stop(event)

    # -- the broker link -----------------------------------------------------------------
    def _connect(self) -> None:
        if not self.link.connect():
            return
        self.observer.reconnected()
        try:
            self.transport.subscribe(self.config.heartbeat_ping, _PING_SUB, client_ack=False, prefetch=1)
            self.transport.subscribe(self.config.fleet_control, _CONTROL_SUB, client_ack=False, prefetch=1)
            if self._cancellable():
                self.transport.subscribe(self.config.destination("reduction_cancel"), _CANCEL_SUB,
                                         client_ack=True, prefetch=1)
                self.transport.subscribe(self.config.cancel_fanout, _FANOUT_SUB, client_ack=False, prefetch=1)
        except NotConnected:
            return
        self.acks.connected()
        self._rejoin_until = time.monotonic() + _REJOIN_WINDOW
        self._reconcile()
        self.outbox.resend()
        self._next_heartbeat = 0.0

    def _failback_due(self) -> Optional[float]:
        """On a backup broker, holding nothing: when to try the first broker again."""
        idle = not len(self.runs) and not len(self.outbox) and not self.stopping
        return self.link.failback_due(self._last_activity if idle else None)

    def _failback(self) -> None:
        """Return to the first broker, whose persisted messages nobody else may be taking."""
        self._last_activity = time.monotonic()
        if self.link.primary_back():
            self.subs.reset()
            self._connect()

    def _on_disconnected(self, event: Disconnected) -> None:
        if not self.link.lost(event):
            return
        self.subs.reset()
        self.acks.dropped(event.epoch)
        for run in (self.runs.in_state(RunState.WAITING) + self.runs.in_state(RunState.HELD)
                    + self.runs.in_state(RunState.PAUSED)):
            self._forget(run, "the broker takes it back")

    def _heartbeat(self) -> None:
        body = messages.encode(heartbeat_body(self.hostname, self.pid))
        try:
            self.transport.send(self.config.heart_beat, body, headers={"persistent": "false"})
        except NotConnected:
            return
        self._next_heartbeat = time.monotonic() + self.config.heartbeat_interval_sec
        self._status(force=True)
        self.observer.heartbeat_sent()
        self.journal.prune()

    def _on_stop(self, event: Stop) -> None:
        if self.stopping:
            return
        logger.info("stopping (%s): no new work; waiting for %d running jobs", event.reason,
                    self.runs.count(RunState.RUNNING))
        self.stopping = True
        self._reconcile()

    # -- deliveries ----------------------------------------------------------------------
    def _on_delivery(self, d: Delivery) -> None:
        if d.epoch != self.transport.epoch:
            return
        self._last_activity = time.monotonic()
        if d.subscription == _PING_SUB:
            answer_ping(d, self.config, self.ping_policy, self.transport, self.hostname, self.pid,
                        self.runs.count(RunState.RUNNING))
            return
        if d.subscription == _FANOUT_SUB:
            self._on_cancel(d)
            return
        if d.subscription == _CONTROL_SUB:
            self._on_control(d)
            return
        queue = self._queue_of(d)
        if queue is None:
            return
        ident = identity(queue, d.body)
        run = self.runs.dead_twin(ident, d.epoch)
        if run is not None:
            logger.info("redelivery of %s (%s) rejoins its %s job", logsafe.text(d.message_id), run.label,
                        run.state.value)
            self.observer.duplicate_delivery("rejoined")
            run.delivery = d
            self._reconcile()
            return
        # While an ACK of this identity is on its way on the live connection, the broker is not
        # redelivering that message: the same body now is a new request.
        in_flight = self.acks.in_flight(ident)
        taken = None if in_flight else self.journal.take_unacked(ident, d.broker_time_ms)
        done_ref = self.leases.still_unacked(taken[1]) if taken is not None else None
        if taken is not None and done_ref is not None:
            logger.info("redelivery %s of a run whose outcome was confirmed: acknowledging", logsafe.text(d.message_id))
            self.observer.duplicate_delivery("confirmed")
            self._ack(d, ident, taken[0], done_ref)
            self._reconcile()
            return
        if taken is not None:
            logger.info("message %s repeats a run settled elsewhere since: a new request", logsafe.text(d.message_id))
        elif d.redelivered and not in_flight and self._ack_lost_by_broker(ident, d.epoch, d.broker_time_ms):
            logger.info("message %s repeats a run acked just before the broker went away, which lost that ack: "
                        "acknowledging", logsafe.text(d.message_id))
            self.observer.duplicate_delivery("lost_ack")
            try:
                self.transport.ack(d)
            except NotConnected:
                return
            self.subs.done(d)
            self._reconcile()
            return
        run = Run("m%d" % next(self._keys), d, ident, self.journal.accepted(ident, None))
        self.runs.add(run)
        if d.subscription == _CANCEL_SUB:
            self._fan_out_cancel(run)
            return
        if self.stopping or self.holding.draining:
            self._let_go(run, "stopping" if self.stopping else "draining")
            self._reconcile()  # a draining agent on RabbitMQ drops the subscription it came on
            return
        self._accept(run, queue)
        self._admit()

    def _queue_of(self, d: Delivery) -> Optional[str]:
        """The queue a run message came from, by its subscription; None: not ours any more."""
        if d.subscription == _CANCEL_SUB:
            return self.config.destination("reduction_cancel")
        queue = self.subs.queue_of(d.subscription)
        return queue if queue is not None and self.subs.take(d) else None

    def _accept(self, run: Run, queue: str) -> None:
        d = run.delivery
        processor = self.processors.get(queue)
        fields: Dict[str, Any] = {}
        try:
            fields = messages.decode_body(d.body, self.config.max_body_bytes)
            if processor is None:
                raise InvalidMessage("No processor for destination %s" % d.destination)
            run.work = processor.accept_from(fields, validated_user(d.headers, self.transport.kind))
            run.processor = processor
            if not processor.cancellable:
                return
            self.journal.set_ref(run.row, run_ref(run.work.payload))
            cancel = self.cancel_desk.on_arrival(run.work.payload, self.leases.answered_at(run), d.broker_time_ms)
            if cancel is not None:
                logger.info("[%s] met on arrival by the cancel of %s", run.work.label, logsafe.text(cancel.who))
                self._cancel_not_running(run, cancel.who)
        except InvalidMessage as err:
            logger.error("rejected message %s on %s: %s", logsafe.text(d.message_id), logsafe.text(d.destination),
                         logsafe.text(err))
            self.observer.rejected(d.destination)
            if processor is not None and fields:
                self._finish(run, processor.invalid(fields, str(err)))
            else:
                self._finish(run, self._malformed(d, str(err)))

    def _malformed(self, d: Delivery, error: str) -> Outcome:
        """The error outcome of a body that is not a usable JSON object: its start, and why."""
        return Outcome(self.config.destination("postprocess_error"), messages.outcome(
            {"raw": messages.raw_echo(d.body), "destination": d.destination}, self.hostname, error))

    # -- holding and admission -----------------------------------------------------------
    def _admit(self) -> None:
        """Start waiting runs that have a slot, unless the node is overloaded."""
        self.holding.next_admission = None
        if not self.holding.draining and not self.holding.overloaded():
            for run in self.runs.in_state(RunState.WAITING):
                if run.cancelled_by is not None and run.processor is not None and run.work is not None:
                    logger.info("[%s] its claimant is gone: answering the cancel by %s here", run.label,
                                logsafe.text(run.cancelled_by))
                    self._finish(run, run.processor.cancelled(run.work, run.cancelled_by))
                    continue
                if self.holding.hold_if_paused(run):
                    continue
                if not self.slots.can_start(run.instrument, run.proposal):
                    continue
                verdict = self.leases.claimed(run, self.acks.done_files_in_flight(), self._forgotten_before(run))
                if verdict is None:
                    self._start(run)
                elif verdict != "held":  # answered already by a claimant whose ack was lost
                    self.journal.confirmed(run.row, verdict)
                    self._settle(run)
        self._reconcile()

    def _forgotten_before(self, run: Run) -> Optional[float]:
        """For a redelivery on a broker that forgets ACKs it confirmed just before dying: when
        the previous connection dropped (see ``Leases.claimed``)."""
        if run.delivery.redelivered and self.transport.forgets_confirmed_acks:
            return self.acks.last_drop()
        return None

    def _reconcile(self) -> None:
        """Hold only what can run soon; keep one idle subscription per queue while there is room."""
        if not self.connected:
            return
        rejoin = self.transport.epoch if self._rejoin_until is not None else None
        let_go, free = self.holding.fit(self.runs, self.slots.running, self.stopping,
                                        self.transport.returns_on_unsubscribe, rejoin)
        for run in let_go:
            self._let_go(run, "no free slot")
        self.subs.reconcile(free, drop_idle=self.holding.draining)

    def _let_go(self, run: Run, why: str) -> None:
        """Give a run that has not started back to the broker and forget it.

        On a broker that keeps un-acked messages of dropped subscriptions (RabbitMQ), a
        stopping agent keeps them un-acked instead: they return when it disconnects.
        """
        if self.transport.returns_on_unsubscribe or not self.stopping:
            self.subs.give_back(run.delivery)
            self.holding.given_back(run, self._full_hold())
        self._forget(run, why)

    def _forget(self, run: Run, why: str) -> None:
        """Drop a run that never started; the broker still has its message."""
        logger.info("letting go of message %s (%s)", logsafe.text(run.delivery.message_id), why)
        self.acks.given_back(run.identity)
        self.runs.pop(run.key)
        self.journal.forget(run.row)

    def _full_hold(self) -> bool:
        """Whether waiting runs are held by a full agent whose subscriptions stay (RabbitMQ)."""
        return not self.transport.returns_on_unsubscribe and self.slots.running >= self.config.max_procs

    def _release_held(self, now: float) -> None:
        """Runs that waited too long for a slot go back to the broker, for an idle agent."""
        for run in self.holding.overdue(self.runs, now, self._full_hold()):
            self._let_go(run, "waited %.1f s for a slot" % (now - run.waiting_since))
        self._reconcile()

    # -- jobs ----------------------------------------------------------------------------
    def _start(self, run: Run) -> None:
        assert run.work is not None and run.processor is not None
        self.slots.start(run.instrument, run.proposal)
        run.state = RunState.RUNNING
        run.started_at = time.monotonic()
        self.journal.running(run.row, self.leases.ref(run))
        self.observer.job_started(run.processor.name)
        run.ctx = JobContext(self.config, self.hostname, run.work, publisher(self.inbox), self.job_env,
                             job_logger)
        run.ctx.log.info("starting %s job", run.processor.name)
        start_job(self.inbox, run.key, run.processor, run.ctx)

    def _leases(self) -> None:
        """Refresh our claims; settle the held runs their claimant answered, start the freed ones."""
        answered, freed = self.leases.tick(self.runs)
        for run, destination in answered:
            self.journal.confirmed(run.row, destination)
            self._settle(run)
        if freed:
            self._admit()

    def _on_job_done(self, event: JobDone) -> None:
        run = self.runs.get(event.key)
        if run is None:
            return
        self.slots.finish(run.instrument, run.proposal)
        if run.processor is not None and run.ctx is not None:
            self.observer.job_finished(run.processor.name, event.outcome.destination,
                                       time.monotonic() - run.started_at, run.ctx.kill_reason)
        self.status.outcome(run, event.outcome.destination, event.outcome.body, time.monotonic() - run.started_at)
        if run.claim_lost:
            self._let_go(run, "another agent took its claim over; its outcome is that agent's to send")
        else:
            self._finish(run, event.outcome)
        self._admit()

    # -- outcomes and settlement ---------------------------------------------------------
    def _finish(self, run: Run, result: Outcome) -> None:
        run.state = RunState.FINISHING
        logger.info("[%s] outcome -> %s", run.label, result.destination)
        self.outbox.send(result.destination, messages.encode(result.body),
                         on_confirm=lambda: self._confirmed(run.key, result), headers=result.headers)

    def _on_receipt(self, event: Receipt) -> None:
        acked = self.acks.receipt(event.receipt_id, event.epoch)
        if acked is not None:
            self.journal.acked(acked[0])
            self.leases.acked(acked[1])
            return
        pending = self.outbox.confirm(event)
        if pending is not None and pending.on_confirm is not None:
            pending.on_confirm()

    def _on_refused(self, event: SendRefused) -> None:
        """The broker refused a message and kept the connection: the outbox sends it again."""
        if event.epoch != self.transport.epoch:
            return
        pending = self.outbox.refused(event)
        if pending is not None:
            self.observer.send_refused(pending.destination, event.reason)

    def _confirmed(self, key: str, result: Outcome) -> None:
        """The outcome of ``key`` is safe at the broker: journal it, release its claim, settle it."""
        run = self.runs.get(key)
        if run is not None:
            claim_ref = self.leases.release(run, result.destination, dict(result.body), result.resend)
            self.journal.confirmed(run.row, result.destination, claim_ref, answered=not result.resend)
            self._settle(run)

    def _settle(self, run: Run) -> None:
        """Acknowledge a run's message: the only place run messages are acked.

        The run is over either way, so its room goes back to the subscriptions even when
        the ack cannot be sent (its delivery died with an earlier connection, for example
        on a broker the agent failed over from); the journal answers its redelivery.
        """
        self.runs.pop(run.key)
        self._ack(run.delivery, run.identity, run.row, run.done_ref)
        self._reconcile()

    def _ack_lost_by_broker(self, ident: str, epoch: int, sent_ms: Optional[int]) -> bool:
        """Whether this redelivery is a message whose confirmed ACK the broker forgot (acks.py):
        not if anyone claimed or answered its run since that ACK, nor if the broker stamped it after
        that ACK (then it is a later request)."""
        if not self.transport.forgets_confirmed_acks:
            return False
        lost = self.acks.lost_by_broker(ident, epoch)
        return lost is not None and sent_by(sent_ms, lost[1]) and not self.leases.touched_since(*lost)

    def _ack(self, d: Delivery, ident: str, row: int, done_ref: Optional[Tuple[str, str]] = None) -> None:
        """ACK with a receipt: until it comes, the journal (and the done file) keep the run "maybe not acked"."""
        receipt = "ack-%d" % next(self._keys)
        try:
            self.transport.ack(d, receipt=receipt)
        except NotConnected:
            logger.info("message %s will be redelivered and answered from the journal", d.message_id)
            return
        self.acks.sent(receipt, (row, done_ref, ident))
        self.subs.done(d)

    # -- cancellation --------------------------------------------------------------------
    def _cancellable(self) -> bool:
        return any(p.cancellable for p in self.processors.values())

    def _fan_out_cancel(self, run: Run) -> None:
        """A cancel from the queue: publish it to every agent, with when the broker took it in
        (``sent_ms``, where it said), then settle it."""
        try:
            fields = dict(messages.decode_body(run.delivery.body, self.config.max_body_bytes))
            parse_cancel(fields)
        except InvalidMessage as err:
            logger.error("rejected cancel request %s: %s", logsafe.text(run.key), logsafe.text(err))
            self._finish(run, self._malformed(run.delivery, str(err)))
            return
        fields.pop("sent_ms", None)
        if run.delivery.broker_time_ms is not None:
            fields["sent_ms"] = run.delivery.broker_time_ms
        self._finish(run, Outcome(self.config.cancel_fanout, fields))

    def _on_cancel(self, d: Delivery) -> None:
        cancel, targets = self.cancel_desk.on_fanout(d.body, self.runs)
        for run in targets:
            assert cancel is not None and run.work is not None and run.processor is not None
            logger.info("[%s] cancelled by %s while %s", run.work.label, logsafe.text(cancel.who), run.state.value)
            if run.state is RunState.RUNNING and run.ctx is not None:
                run.ctx.cancel(cancel.who)
            else:
                self._cancel_not_running(run, cancel.who)
        if targets:
            self._reconcile()

    def _cancel_not_running(self, run: Run, who: str) -> None:
        """A cancel met a run that does not run here.  A run a live agent runs is held for it,
        the cancel handed over; a copy of a request another agent already answered is settled
        from that answer (``Leases.claimed``); otherwise this agent claims the run and answers
        the cancel, so that the answer stands beside the claim for a copy redelivered elsewhere."""
        assert run.work is not None and run.processor is not None
        if self.leases.hand_cancel(run, who):
            return
        answer = self.leases.claimed(run, self.acks.done_files_in_flight(), self._forgotten_before(run))
        if answer == "held":  # claimed by another agent since: the cancel is that agent's
            if self.leases.hand_cancel(run, who):
                return
            run.state, run.watch, answer = RunState.WAITING, None, None
        if answer is not None:
            self.journal.confirmed(run.row, answer)
            self._settle(run)
        else:
            self._finish(run, run.processor.cancelled(run.work, who))

    # -- fleet status and control (status.py, control.py) ---------------------------------
    def _status(self, force: bool = False, stopped: bool = False) -> None:
        """Publish the fleet status when it changed (or ``force``)."""
        self.status.publish(self.runs, self.holding, self.slots.running, self.stopping, force, stopped)

    def _on_control(self, d: Delivery) -> None:
        effect = self.control.on_command(d, self.runs)
        self.observer.control_state(self.holding.draining, self.holding.paused)
        if effect.stop is not None:
            self._on_stop(Stop(effect.stop))
        if effect.refit:
            self._admit()
        if effect.status:
            self._status(force=True)

"""The agent's loop: the one place that dispatches messages, sends and acknowledges.

Everything that happens reaches the loop as an event in its inbox: deliveries, receipts
and disconnects from the transport's receiver thread, messages and results from job
threads, and stop requests from signal handlers.  A run message is acked only after the
broker has confirmed its outcome (receipt), and only here, in :meth:`Agent._settle`.
"""

import collections
import logging
import os
import queue
import threading
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from postprocessing import logsafe, messages
from postprocessing.agent.cancels import CancelBook, CancelRequest, parse_cancel
from postprocessing.agent.heartbeat import heartbeat_body, ping_reply, reply_destination
from postprocessing.agent.observer import Observer
from postprocessing.agent.outbox import Outbox
from postprocessing.agent.ping import PingPolicy, own_destinations
from postprocessing.agent.runs import JobDone, Publish, Run, Stop, twin_key
from postprocessing.agent.subscriptions import Subscriptions
from postprocessing.config import Config
from postprocessing.errors import Cancelled, InvalidMessage, NotConnected, PostProcessingError, TransportError
from postprocessing.jobs.limits import Admission
from postprocessing.jobs.slots import Slots
from postprocessing.processors.base import JobContext, Outcome, Processor
from postprocessing.transport import Delivery, Disconnected, Receipt, Sink, Transport
from postprocessing.transport.validated import validated_user

logger = logging.getLogger(__name__)
job_logger = logging.getLogger("postprocessing.jobs.run")

_SETTLED_MEMORY = 10000
_PING_SUB = "pp-ping"
_CANCEL_SUB = "pp-cancel"
_FANOUT_SUB = "pp-cancel-fanout"
#: How long a job waits for the loop to take a message it publishes (the loop never blocks long).
_PUBLISH_WAIT = 10.0


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
        self.processors = {p.queue: p for p in processors}
        self.subs = Subscriptions(self.transport, list(self.processors))
        self.outbox = Outbox(self.transport)
        self.slots = Slots(config.max_procs, config.jobs_per_instrument, config.serialize_per_proposal)
        self.cancels = CancelBook(config.cancel_window_sec)
        self.admission = Admission(config.admission_max_load_per_cpu, config.admission_min_free_mem_perc)
        self.job_env = dict(job_env)
        self.runs: collections.OrderedDict[str, Run] = collections.OrderedDict()
        self.settled: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.connected = False
        self.stopping = False
        self._stop_deadline: Optional[float] = None
        self._backoff = config.reconnect_initial_sec
        self._next_connect = 0.0
        self._next_heartbeat = 0.0
        self._next_admission: Optional[float] = None
        self._overload_reason: Optional[str] = None
        self._last_activity = time.monotonic()
        self.ping_policy = PingPolicy(own_destinations(config) + list(self.processors))

    # -- public ------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop (safe from a signal handler: the put runs on its own thread)."""
        threading.Thread(target=self.inbox.put, args=(Stop(reason),), daemon=True).start()

    def run(self) -> int:
        """Run until stopped; returns the process exit status."""
        logger.info("agent starting on %s (pid %d), queues: %s", self.hostname, self.pid,
                    ", ".join(self.processors))
        while not self.run_once():
            pass
        self.transport.disconnect()
        logger.info("agent stopped")
        return 0

    def run_once(self, max_wait: Optional[float] = None) -> bool:
        """Fire due timers, then handle at most one event; True once a stop has completed."""
        now = time.monotonic()
        if not self.connected and now >= self._next_connect:
            self._connect()
        if self.connected and now >= self._next_heartbeat:
            self._heartbeat()
        failback = self._failback_due()
        if failback is not None and now >= failback:
            self._failback()
        if self._next_admission is not None and now >= self._next_admission:
            self._admit()
        hold = self._hold_deadline()
        if hold is not None and now >= hold:
            self._release_held(now)
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
        deadlines = [self._next_heartbeat if self.connected else self._next_connect]
        if self._next_admission is not None:
            deadlines.append(self._next_admission)
        hold = self._hold_deadline()
        if hold is not None:
            deadlines.append(hold)
        failback = self._failback_due()
        if failback is not None:
            deadlines.append(failback)
        if self._stop_deadline is not None:
            deadlines.append(self._stop_deadline)
        return max(0.0, min(deadlines) - now)

    def _finished(self, now: float) -> bool:
        if any(run.state == "running" for run in self.runs.values()):
            return False
        if self._stop_deadline is None:
            self._stop_deadline = now + self.config.shutdown_timeout_sec
        if not self.runs and not len(self.outbox):
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
        elif isinstance(event, Publish):
            self.outbox.send(event.destination, messages.encode(event.body))
            event.sent.set()
        elif isinstance(event, JobDone):
            self._on_job_done(event)
        elif isinstance(event, Disconnected):
            self._on_disconnected(event)
        elif isinstance(event, Stop):
            self._on_stop(event)

    def _connect(self) -> None:
        try:
            self.transport.connect()
        except TransportError as err:
            self._next_connect = time.monotonic() + self._backoff
            logger.warning("broker connection failed (%s); retrying in %.1f s", err, self._backoff)
            self._backoff = min(self._backoff * 2, self.config.reconnect_max_sec)
            return
        self.connected = True
        self._backoff = self.config.reconnect_initial_sec
        logger.info("connected to broker %s", self.transport.connected_to)
        self.observer.reconnected()
        try:
            self.transport.subscribe(self.config.heartbeat_ping, _PING_SUB, client_ack=False, prefetch=1)
            if self._cancellable():
                self.transport.subscribe(self.config.destination("reduction_cancel"), _CANCEL_SUB,
                                         client_ack=True, prefetch=1)
                self.transport.subscribe(self.config.cancel_fanout, _FANOUT_SUB, client_ack=False, prefetch=1)
        except NotConnected:
            return
        self._reconcile()
        self.outbox.resend()
        self._next_heartbeat = 0.0

    def _failback_due(self) -> Optional[float]:
        """When to try the first broker again: on a backup, holding nothing, idle for a while."""
        if not self.config.failback_interval_sec or not self.connected or self.transport.connected_index <= 0:
            return None
        if self.runs or len(self.outbox) or self.stopping:
            return None
        return self._last_activity + self.config.failback_interval_sec

    def _failback(self) -> None:
        """Return to the first broker, whose persisted messages nobody else may be taking."""
        self._last_activity = time.monotonic()
        if not self.transport.primary_reachable():
            return
        logger.info("the first broker is back and %s is idle: failing back", self.transport.connected_to)
        self.connected = False
        self.subs.reset()
        self._connect()

    def _on_disconnected(self, event: Disconnected) -> None:
        if event.epoch != self.transport.epoch or not self.connected:
            return
        logger.warning("lost broker connection: %s", event.reason)
        self.connected = False
        self.subs.reset()
        self._next_connect = time.monotonic() + self._backoff
        for run in [r for r in self.runs.values() if r.state == "waiting"]:
            self._forget(run, "the broker takes it back")

    def _heartbeat(self) -> None:
        body = messages.encode(heartbeat_body(self.hostname, self.pid))
        try:
            self.transport.send(self.config.heart_beat, body, headers={"persistent": "false"})
        except NotConnected:
            return
        self._next_heartbeat = time.monotonic() + self.config.heartbeat_interval_sec
        self.observer.heartbeat_sent()

    def _on_stop(self, event: Stop) -> None:
        if self.stopping:
            return
        logger.info("stopping (%s): no new work; waiting for %d running jobs", event.reason,
                    sum(1 for r in self.runs.values() if r.state == "running"))
        self.stopping = True
        self._reconcile()

    # -- deliveries ----------------------------------------------------------------------
    def _on_delivery(self, d: Delivery) -> None:
        if d.epoch != self.transport.epoch:
            return
        self._last_activity = time.monotonic()
        if d.subscription == _PING_SUB:
            self._answer_ping(d)
            return
        if d.subscription == _FANOUT_SUB:
            self._on_cancel(d)
            return
        if d.subscription != _CANCEL_SUB and not self.subs.take(d):
            return
        run = self.runs.get(d.message_id) or self._stale_twin(d)
        if run is not None:
            logger.info("redelivery of %s (%s) rejoins its %s job", logsafe.text(d.message_id),
                        run.work.label if run.work else "message", run.state)
            run.delivery = d
            return
        run = Run(d.message_id, d)
        self.runs[run.key] = run
        if d.message_id in self.settled or (d.redelivered and twin_key(d) in self.settled):
            logger.info("redelivery of settled message %s: acknowledging", logsafe.text(d.message_id))
            self._settle(run)
            return
        if d.subscription == _CANCEL_SUB:
            self._fan_out_cancel(run)
            return
        if self.stopping:
            self._let_go(run, "stopping")
            return
        self._accept(run)
        self._admit()

    def _stale_twin(self, d: Delivery) -> Optional[Run]:
        """A run whose delivery died with an earlier connection and that ``d`` redelivers.

        ActiveMQ keeps a message's id across redeliveries; RabbitMQ gives each delivery a new
        one, so a redelivered message is matched by destination and body instead.
        """
        if not d.redelivered:
            return None
        for run in self.runs.values():
            old = run.delivery
            if old.epoch != d.epoch and old.destination == d.destination and old.body == d.body:
                return run
        return None

    def _accept(self, run: Run) -> None:
        d = run.delivery
        processor = self.processors.get(d.destination)
        fields: Dict[str, Any] = {}
        try:
            fields = messages.decode_body(d.body, self.config.max_body_bytes)
            if processor is None:
                raise InvalidMessage("No processor for destination %s" % d.destination)
            run.work = processor.accept_from(fields, validated_user(d.headers, self.transport.kind))
            run.processor = processor
            cancel = self.cancels.take(run.work.payload) if processor.cancellable else None
            if cancel is not None:
                logger.info("[%s] dropped on arrival: cancelled by %s", run.work.label, logsafe.text(cancel.who))
                self._finish(run, processor.cancelled(run.work, cancel.who))
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

    def _admit(self) -> None:
        """Start waiting runs that have a slot, unless the node is overloaded."""
        self._next_admission = None
        if not self._overloaded():
            for run in [r for r in self.runs.values() if r.state == "waiting"]:
                if self.slots.can_start(run.instrument, run.proposal):
                    self._start(run)
        self._reconcile()

    def _overloaded(self) -> bool:
        reason = self.admission.overloaded()
        if reason is None:
            self._overload_reason = None
            return False
        if reason != self._overload_reason:
            logger.info("node overloaded (%s): no job starts until it is not", reason)
        self._overload_reason = reason
        if self._next_admission is None:
            self._next_admission = time.monotonic() + self.config.admission_check_interval_sec
        return True

    def _start(self, run: Run) -> None:
        assert run.work is not None and run.processor is not None
        self.slots.start(run.instrument, run.proposal)
        run.state = "running"
        run.started_at = time.monotonic()
        self.observer.job_started(run.processor.name)
        run.ctx = JobContext(self.config, self.hostname, run.work, self._publisher(), self.job_env,
                             job_logger)
        run.ctx.log.info("starting %s job", run.processor.name)
        threading.Thread(target=self._job_main, args=(run.key, run.processor, run.ctx),
                         name="job-%s" % run.work.label, daemon=True).start()

    def _publisher(self) -> Callable[[str, Mapping[str, Any]], None]:
        def publish(destination: str, body: Mapping[str, Any]) -> None:
            sent = threading.Event()
            self.inbox.put(Publish(destination, body, sent))
            sent.wait(_PUBLISH_WAIT)
        return publish

    def _job_main(self, key: str, processor: Processor, ctx: JobContext) -> None:
        """The job's own thread: run the processor to an outcome, whatever happens."""
        try:
            result = processor.execute(ctx)
        except Cancelled:
            result = processor.cancelled(ctx.work, ctx.cancelled_by or "unknown")
        except PostProcessingError as err:
            ctx.log.error("job failed: %s", err)
            result = processor.failed(ctx, str(err))
        except Exception as err:  # a processor bug must still end the run with an outcome
            ctx.log.exception("job failed unexpectedly")
            result = processor.failed(ctx, "internal error: %s: %s" % (type(err).__name__, err))
        self.inbox.put(JobDone(key, result))

    def _on_job_done(self, event: JobDone) -> None:
        run = self.runs.get(event.key)
        if run is None:
            return
        self.slots.finish(run.instrument, run.proposal)
        if run.processor is not None and run.ctx is not None:
            self.observer.job_finished(run.processor.name, event.outcome.destination,
                                       time.monotonic() - run.started_at, run.ctx.kill_reason)
        self._finish(run, event.outcome)
        self._admit()

    # -- outcomes and settlement ---------------------------------------------------------
    def _finish(self, run: Run, result: Outcome) -> None:
        run.state = "finishing"
        label = run.work.label if run.work else run.key
        logger.info("[%s] outcome -> %s", label, result.destination)
        self.outbox.send(result.destination, messages.encode(result.body),
                         on_confirm=lambda: self._confirmed(run.key), headers=result.headers)

    def _on_receipt(self, event: Receipt) -> None:
        pending = self.outbox.confirm(event)
        if pending is not None and pending.on_confirm is not None:
            pending.on_confirm()

    def _confirmed(self, key: str) -> None:
        """The outcome of ``key`` is safe at the broker: settle the message."""
        self.settled[key] = None
        run = self.runs.get(key)
        if run is not None and run.delivery.epoch != self.transport.epoch:
            self.settled[twin_key(run.delivery)] = None
        while len(self.settled) > _SETTLED_MEMORY:
            self.settled.popitem(last=False)
        if run is not None:
            self._settle(run)

    def _settle(self, run: Run) -> None:
        """Acknowledge a run's message: the only place run messages are acked.

        The run is over either way, so its room goes back to the subscriptions even when
        the ack cannot be sent (its delivery died with an earlier connection, for example
        on a broker the agent failed over from).
        """
        self.runs.pop(run.key, None)
        try:
            self.transport.ack(run.delivery)
        except NotConnected:
            logger.info("message %s will be redelivered after reconnect and acked then", run.key)
        else:
            self.subs.done(run.delivery)
        self._reconcile()

    def _forget(self, run: Run, why: str) -> None:
        """Drop a run that never started; the broker still has its message."""
        logger.info("letting go of message %s (%s)", logsafe.text(run.key), why)
        self.runs.pop(run.key, None)

    def _reconcile(self) -> None:
        """Hold only what can run soon; keep one idle subscription per queue while there is room.

        Runs wait here only for a per-instrument slot, and at most ``max_procs`` of them.
        When every slot is busy, the node is overloaded or the agent is stopping, waiting
        runs go back to the broker, where an idle agent can take them.  (On RabbitMQ they
        stay until they have waited ``max_wait_hold_sec`` or the agent stops: see
        subscriptions.py.)
        """
        if not self.connected:
            return
        full = self.slots.running >= self.config.max_procs
        blocked = self.stopping or full or self._overloaded()
        waiting = [r for r in self.runs.values() if r.state == "waiting"]
        keep = 0 if blocked else self.config.max_procs
        if self.stopping or self.transport.returns_on_unsubscribe:
            for run in waiting[keep:]:
                self._let_go(run, "no free slot")
        finishing = sum(1 for r in self.runs.values() if r.state == "finishing" and r.ctx is not None)
        free = self.config.max_procs - max(self.slots.running + finishing, len(waiting[:keep]))
        self.subs.reconcile(0 if blocked else free)

    def _let_go(self, run: Run, why: str) -> None:
        """Give a run that has not started back to the broker and forget it.

        On a broker that keeps un-acked messages of dropped subscriptions (RabbitMQ), a
        stopping agent keeps them un-acked instead: they return when it disconnects.
        """
        if self.transport.returns_on_unsubscribe or not self.stopping:
            self.subs.give_back(run.delivery)
        self._forget(run, why)

    # -- holding limits and cancellation -------------------------------------------------
    def _hold_deadline(self) -> Optional[float]:
        waiting = [r.waiting_since for r in self.runs.values() if r.state == "waiting"]
        return min(waiting) + self.config.max_wait_hold_sec if waiting else None

    def _release_held(self, now: float) -> None:
        """Runs that waited too long for a slot go back to the broker, for an idle agent."""
        for run in [r for r in self.runs.values() if r.state == "waiting"]:
            if now - run.waiting_since >= self.config.max_wait_hold_sec:
                self._let_go(run, "waited %.0f s for a slot" % (now - run.waiting_since))
        self._reconcile()

    def _cancellable(self) -> bool:
        return any(p.cancellable for p in self.processors.values())

    def _fan_out_cancel(self, run: Run) -> None:
        """A cancel from the queue: publish it to every agent, then settle it."""
        try:
            fields = messages.decode_body(run.delivery.body, self.config.max_body_bytes)
            parse_cancel(fields)
        except InvalidMessage as err:
            logger.error("rejected cancel request %s: %s", logsafe.text(run.key), logsafe.text(err))
            self._finish(run, self._malformed(run.delivery, str(err)))
            return
        self._finish(run, Outcome(self.config.cancel_fanout, fields))

    def _on_cancel(self, d: Delivery) -> None:
        try:
            cancel = parse_cancel(messages.decode_body(d.body, self.config.max_body_bytes))
        except InvalidMessage as err:
            logger.warning("ignored a malformed cancel: %s", logsafe.text(err))
            return
        matched = self._cancel_runs(cancel)
        if matched:
            self.cancels.discard(cancel)
        else:
            self.cancels.add(cancel)
            logger.info("cancel of %s %s by %s: no such run here; it stands for %.0f s", cancel.instrument,
                        cancel.run_number, logsafe.text(cancel.who), self.config.cancel_window_sec)

    def _cancel_runs(self, cancel: CancelRequest) -> bool:
        matched = False
        for run in list(self.runs.values()):
            if run.work is None or run.processor is None or not run.processor.cancellable:
                continue
            if run.state not in ("waiting", "running") or not cancel.matches(run.work.payload):
                continue
            matched = True
            logger.info("[%s] cancelled by %s while %s", run.work.label, logsafe.text(cancel.who), run.state)
            if run.state == "running" and run.ctx is not None:
                run.ctx.cancel(cancel.who)
            else:
                self._finish(run, run.processor.cancelled(run.work, cancel.who))
        if matched:
            self._reconcile()
        return matched

    # -- ping ----------------------------------------------------------------------------
    def _answer_ping(self, d: Delivery) -> None:
        ping = reply_destination(d.body, self.config.max_body_bytes)
        sender = validated_user(d.headers, self.transport.kind)
        refusal = "no usable reply_to" if ping is None else self.ping_policy.refusal(ping["reply_to"])
        if ping is None or refusal is not None:
            self.ping_policy.log_refusal(sender, refusal or "")
            return
        running = sum(1 for r in self.runs.values() if r.state == "running")
        body = messages.encode(ping_reply(ping, self.hostname, self.pid, running))
        try:
            self.transport.send(ping["reply_to"], body, headers={"persistent": "false"})
        except NotConnected:
            logger.info("could not answer ping: not connected")


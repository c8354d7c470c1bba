"""What every processor is: it accepts a message as Work, then runs it as a job to an Outcome.

``accept`` runs on the agent's loop and must be quick (no filesystem access).  ``run``
runs on the job's own thread; it talks to the broker only through ``ctx.publish``,
which hands the message to the agent's loop, and starts subprocesses only through
``ctx.run_process``, which applies the limits and lets the agent kill them.
"""

import dataclasses
import logging
import threading
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence

from postprocessing import logsafe
from postprocessing.config import Config
from postprocessing.errors import Cancelled
from postprocessing.jobs.limits import MemoryLimit, TimeLimit
from postprocessing.jobs.process import JobProcess, ProcessResult
from postprocessing.messages import outcome
from postprocessing.safefiles import open_nofollow


@dataclasses.dataclass(frozen=True)
class Work:
    """A message accepted by a processor: what to do and for whom."""

    fields: Mapping[str, Any]
    label: str
    instrument: Optional[str] = None
    payload: Any = None
    #: Runs of one proposal never run together when ``serialize_per_proposal`` is on.
    proposal: Optional[str] = None
    #: The sender as the broker validated it (see transport/validated.py), if it did.
    sender: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A message that ends a job (``headers`` for example schedule a delayed re-send)."""

    destination: str
    body: Mapping[str, Any]
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: The request itself, sent back to its queue for a later attempt (a data retry): the run
    #: is not answered yet, so a cancel still stands for it.
    resend: bool = False


class RunLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Puts the run's identity (instrument and run number) in every job log line.

    Job log lines carry values from messages and scripts: every argument is escaped."""

    def process(self, msg: Any, kwargs: Any) -> Any:
        return "[%s] %s" % (logsafe.text(self.extra["run"]), msg), kwargs  # type: ignore[index]

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Log with every argument escaped (:func:`postprocessing.logsafe.arg`)."""
        super().log(level, msg, *(logsafe.arg(a) for a in args), **kwargs)


class JobContext:
    """What a running job may use: config, the broker (via the loop), and subprocesses."""

    def __init__(self, config: Config, hostname: str, work: Work,
                 publish: Callable[[str, Mapping[str, Any]], None],
                 env: Mapping[str, str], logger: logging.Logger) -> None:
        self.config = config
        self.hostname = hostname
        self.work = work
        self.env = env
        self.log = RunLogger(logger, {"run": work.label})
        self._publish = publish
        self._lock = threading.Lock()
        self._processes: List[JobProcess] = []
        self._cancel_reason: Optional[str] = None
        #: Set when the job is cancelled or given up: wakes :meth:`Processor.execute`.
        self._interrupted = threading.Event()
        self._abandoned = False
        #: Set when a limit killed one of the job's processes.
        self.kill_reason: Optional[str] = None
        #: Who cancelled the run, once it is cancelled.
        self.cancelled_by: Optional[str] = None

    def publish(self, destination: str, body: Mapping[str, Any]) -> None:
        """Send a message (for example STARTED) in order, before the job's outcome.

        Returns once the agent's loop has handed it to the broker (or queued it for after
        a reconnect), so a script started next never runs before its STARTED is out.
        A job given up (time limit, cancel) publishes nothing more."""
        if self._abandoned:
            self.log.info("given up: not sending to %s", destination)
            return
        self._publish(destination, body)

    def run_process(self, argv: Sequence[str], cwd: str, stdout_path: str,
                    stderr_path: str) -> ProcessResult:
        """Run a subprocess under the job limits, stdout and stderr to files."""
        cfg = self.config
        with open_nofollow(stdout_path, root=cfg.data_root) as out, \
                open_nofollow(stderr_path, root=cfg.data_root) as err:
            with self._lock:
                if self._cancel_reason is not None:
                    raise Cancelled(self._cancel_reason)
                proc = JobProcess(argv, cwd, out, err, self.env, cfg.job_nice)
                self._processes.append(proc)
            self.log.info("started pid %d: %s", proc.pid, " ".join(argv))
            try:
                result = proc.wait(TimeLimit(cfg.task_time_limit_minutes),
                                   MemoryLimit(cfg.system_mem_limit_perc),
                                   cfg.mem_check_interval_sec, cfg.kill_grace_sec)
            finally:
                with self._lock:
                    self._processes.remove(proc)
        self.log.info("pid %d ended: %s%s", proc.pid, result.describe,
                      ", " + result.kill_reason if result.kill_reason else "")
        if result.kill_reason:
            self.kill_reason = result.kill_reason
        return result

    def pids(self) -> List[int]:
        """The process ids of the job's subprocesses now running (for the fleet status)."""
        with self._lock:
            return [proc.pid for proc in self._processes]

    def cancel(self, who: str) -> None:
        """Cancel the run (from any thread): kill its processes; later ``run_process`` calls refuse."""
        reason = "cancelled by %s" % who
        with self._lock:
            self.cancelled_by = who
            self._cancel_reason = reason
            for proc in self._processes:
                proc.request_kill(reason)
        self._interrupted.set()

    def wake(self) -> None:
        """Wake :meth:`wait_woken` (the in-process work ended)."""
        self._interrupted.set()

    def wait_woken(self, timeout: float) -> None:
        """Wait until the work ends, the job is cancelled, or ``timeout`` passes."""
        self._interrupted.wait(timeout)

    def abandon(self, reason: str) -> None:
        """Give the job up: its thread may go on, but publishes and starts nothing more."""
        with self._lock:
            self._abandoned = True
            if self._cancel_reason is None:
                self._cancel_reason = reason

    def reply(self, destination: str, error: Optional[str] = None, **extra: Any) -> Outcome:
        """An outcome carrying the input fields back, with ``information`` and maybe ``error``."""
        return Outcome(destination, outcome(self.work.fields, self.hostname, error, **extra))


class Processor:
    """Base of all processors; a subclass handles the messages of one input queue."""

    name: ClassVar[str] = ""
    #: Config key holding the name of the input queue.
    queue_key: ClassVar[str] = ""
    #: Whether cancel requests apply to this processor's runs (payload is a RunRequest).
    cancellable: ClassVar[bool] = False
    #: Whether the job's work happens in the agent's own process (HTTP requests, file
    #: writes) rather than in subprocesses, which ``run_process`` limits and kills.
    in_process: ClassVar[bool] = True

    def __init__(self, config: Config, hostname: str) -> None:
        self.config = config
        self.hostname = hostname

    @property
    def queue(self) -> str:
        return self.config.destination(self.queue_key)

    def accept(self, data: Dict[str, Any]) -> Work:
        """Validate a message body into Work; raises InvalidMessage."""
        raise NotImplementedError

    def accept_from(self, data: Dict[str, Any], sender: Optional[str]) -> Work:
        """:meth:`accept`, recording the broker-validated ``sender`` in the Work."""
        return dataclasses.replace(self.accept(data), sender=sender)

    def run(self, ctx: JobContext) -> Outcome:
        """Do the work to its outcome; runs on the job's own thread."""
        raise NotImplementedError

    def execute(self, ctx: JobContext) -> Outcome:
        """:meth:`run` under the job time limit and cancellation; raises Cancelled when cancelled.

        Subprocess jobs get both from ``run_process``.  In-process work cannot be killed,
        so it runs on a thread of its own that is given up at the time limit or on cancel:
        the run ends with its outcome at once, and the thread publishes nothing more."""
        if not self.in_process:
            return self.run(ctx)
        done: List[Outcome] = []
        failure: List[Exception] = []

        def work() -> None:
            try:
                done.append(self.run(ctx))
            except Exception as err:  # noqa: BLE001 (re-raised on the job's thread, which reports it)
                failure.append(err)
            ctx.wake()

        worker = threading.Thread(target=work, name="%s-work" % threading.current_thread().name, daemon=True)
        worker.start()
        limit = TimeLimit(self.config.task_time_limit_minutes)
        ctx.wait_woken(limit.remaining())
        if failure:
            raise failure[0]
        if done:
            return done[0]
        if ctx.cancelled_by is not None:
            ctx.abandon("cancelled by %s" % ctx.cancelled_by)
            ctx.log.warning("cancelled by %s: in-process work given up", ctx.cancelled_by)
            raise Cancelled("cancelled by %s" % ctx.cancelled_by)
        reason = limit.check() or "Time limit exceeded"
        ctx.abandon(reason)
        ctx.kill_reason = reason
        ctx.log.error("%s: in-process work given up", reason)
        return self.failed(ctx, reason)

    def invalid(self, fields: Mapping[str, Any], error: str) -> Outcome:
        """The outcome for a message that failed validation."""
        return Outcome(self.config.destination("postprocess_error"),
                       outcome(fields, self.hostname, error))

    def failed(self, ctx: JobContext, error: str) -> Outcome:
        """The outcome when the job itself broke (an unexpected exception)."""
        return self.invalid(ctx.work.fields, error)

    def cancelled(self, work: Work, who: str) -> Outcome:
        """The outcome of a cancelled run."""
        return self.invalid(work.fields, "cancelled by %s" % who)

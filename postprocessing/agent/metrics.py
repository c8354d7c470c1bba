"""An observer that counts what the agent does and serves it to Prometheus.

Switched on by the config key ``metrics_port``; needs ``prometheus-client`` (the
``metrics`` extra).  The metrics live in a registry of their own, served from a daemon
thread at ``http://<metrics_address>:<metrics_port>/metrics``.  With ``management_url`` set,
another daemon thread reads queue depth from the broker every ``management_poll_sec``
(:mod:`postprocessing.ops.queues`); without it the queue metrics are left out.  Every
metric is described in ``docs/operations.md``.
"""

import logging
import threading
import time
from typing import Any, Dict, Mapping, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from postprocessing.agent.observer import Observer
from postprocessing.config import Config
from postprocessing.errors import ConfigError
from postprocessing.ops import queues

logger = logging.getLogger(__name__)

#: Job durations run from seconds to hours.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
                    float("inf"))

#: Config keys of outcome destinations and the result each one stands for.
_RESULT_KEYS = {
    "reduction_complete": "complete", "reduction_error": "error", "reduction_disabled": "disabled",
    "postprocess_error": "invalid", "catalog_complete": "complete", "catalog_error": "error",
    "reduction_catalog_complete": "complete", "reduction_catalog_error": "error",
}


def limit_of(kill_reason: str) -> str:
    """Which limit a kill reason names: memory, time or other."""
    text = kill_reason.lower()
    if text.startswith("memory"):
        return "memory"
    if text.startswith("time"):
        return "time"
    return "other"


class MetricsObserver(Observer):
    """Prometheus metrics of one agent."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self._results = self._result_names(config)
        self._lock = threading.Lock()
        self._last_heartbeat: Optional[float] = None
        self._connects = 0
        self.running = Gauge("postprocessing_jobs_running", "Jobs running now, by processor",
                             ["kind"], registry=self.registry)
        self.outcomes = Counter("postprocessing_job_outcomes", "Jobs ended, by processor and result",
                                ["kind", "result"], registry=self.registry)
        self.duration = Histogram("postprocessing_job_duration_seconds", "How long jobs ran, by processor",
                                  ["kind"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.limit_kills = Counter("postprocessing_job_limit_kills", "Jobs killed by a limit",
                                   ["kind", "limit"], registry=self.registry)
        self.rejected_messages = Counter("postprocessing_messages_rejected",
                                         "Messages that failed validation, by destination",
                                         ["destination"], registry=self.registry)
        self.reconnects = Counter("postprocessing_broker_reconnects",
                                  "Broker connections made after the first one", registry=self.registry)
        self.refused = Counter("postprocessing_sends_refused",
                               "Messages the broker refused (they are sent again), by destination",
                               ["destination"], registry=self.registry)
        self.heartbeat_age = Gauge("postprocessing_heartbeat_age_seconds",
                                   "Seconds since the last heartbeat went out (NaN before the first)",
                                   registry=self.registry)
        self.heartbeat_age.set_function(self._heartbeat_age)
        for kind in config.processors:
            self.running.labels(kind)
        self.slots_used = Gauge("postprocessing_slots_used", "Job slots in use (jobs running)",
                                registry=self.registry)
        self.slots_total = Gauge("postprocessing_slots_total", "Job slots of the agent (max_procs)",
                                 registry=self.registry)
        self.slots_total.set(config.max_procs)
        self.draining = Gauge("postprocessing_draining", "1 while the agent drains (takes no new runs)",
                              registry=self.registry)
        self.paused = Gauge("postprocessing_paused", "1 for each instrument whose runs the agent does not start",
                            ["instrument"], registry=self.registry)
        self.paused_since = Gauge("postprocessing_paused_since_timestamp_seconds",
                                  "Unix time the pause of each paused instrument began",
                                  ["instrument"], registry=self.registry)
        self.outcomes_sent = Counter("postprocessing_outcomes_sent", "Job outcomes sent, by destination",
                                     ["destination"], registry=self.registry)
        self.duplicates = Counter("postprocessing_duplicate_deliveries",
                                  "Messages delivered again for a run already known, by how they were handled",
                                  ["how"], registry=self.registry)
        for how in ("rejoined", "confirmed", "lost_ack"):
            self.duplicates.labels(how)
        self._paused_now: Dict[str, float] = {}
        self._reader = queues.reader(config)
        self._stop_polling = threading.Event()
        self._poller: Optional[threading.Thread] = None
        if self._reader is not None:
            self.queue_up = Gauge("postprocessing_queue_stats_up",
                                  "1 when the last read of the broker's management interface worked",
                                  registry=self.registry)
            self.queue_messages = Gauge("postprocessing_queue_messages",
                                        "Messages waiting at the broker on each input queue",
                                        ["queue"], registry=self.registry)
            self.queue_age = Gauge("postprocessing_queue_oldest_message_age_seconds",
                                   "Age of the oldest message waiting on each input queue",
                                   ["queue"], registry=self.registry)
            self.dlq_messages = Gauge("postprocessing_dlq_messages", "Messages on the dead-letter queue",
                                      ["queue"], registry=self.registry)
            self.dlq_age = Gauge("postprocessing_dlq_oldest_message_age_seconds",
                                 "Age of the oldest message on the dead-letter queue",
                                 ["queue"], registry=self.registry)
        self._server: Any = None

    @staticmethod
    def _result_names(config: Config) -> Dict[str, str]:
        out = {}
        for key, result in _RESULT_KEYS.items():
            if hasattr(config, key):
                out[config.destination(key)] = result
        return out

    def serve(self) -> None:
        """Start the HTTP endpoint; raises ConfigError when the port cannot be used."""
        try:
            started = start_http_server(self.config.metrics_port, addr=self.config.metrics_address,
                                        registry=self.registry)
        except OSError as err:
            raise ConfigError("metrics_port", "cannot listen on %s:%d: %s" % (
                self.config.metrics_address, self.config.metrics_port, err.strerror or err)) from None
        self._server = started[0] if isinstance(started, tuple) else None
        logger.info("metrics at http://%s:%d/metrics", self.config.metrics_address, self.config.metrics_port)
        if self._reader is None:
            logger.info("no management_url: queue depth is not read, and its metrics are left out")
        else:
            logger.info("queue depth from %s (%s) every %.0f s", self.config.management_url, self._reader.kind,
                        self.config.management_poll_sec)
            self._poller = threading.Thread(target=self._poll, name="queue-depth", daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        failing = False
        while not self._stop_polling.is_set():
            try:
                self.read_queues()
                if failing:
                    logger.info("queue depth: %s answers again", self.config.management_url)
                failing = False
            except queues.ManagementError as err:
                if not failing:
                    logger.warning("queue depth: %s", err)
                failing = True
            self._stop_polling.wait(self.config.management_poll_sec)

    def read_queues(self) -> None:
        """Read queue depth once into the gauges; raises ManagementError (and marks it down) on failure."""
        assert self._reader is not None
        try:
            depths = self._reader.read()
        except queues.ManagementError:
            self.queue_up.set(0)
            raise
        self.queue_up.set(1)
        for depth in depths:
            count, age = (self.dlq_messages, self.dlq_age) if depth.dead_letters else (
                self.queue_messages, self.queue_age)
            count.labels(depth.queue).set(depth.messages)
            if depth.oldest_age_sec is not None:
                age.labels(depth.queue).set(depth.oldest_age_sec)
            elif depth.messages == 0:
                age.labels(depth.queue).set(0)
            else:
                # Messages wait but the broker cannot tell their age (RabbitMQ without timestamps):
                # leave the series out rather than guess.
                try:
                    age.remove(depth.queue)
                except KeyError:
                    pass

    def close(self) -> None:
        self._stop_polling.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def result_of(self, destination: str) -> str:
        """The result an outcome destination stands for; unknown ones by their last name part."""
        known = self._results.get(destination)
        if known is not None:
            return known
        return destination.rsplit("/", 1)[-1].rsplit(".", 1)[-1].lower() or "unknown"

    def _heartbeat_age(self) -> float:
        with self._lock:
            last = self._last_heartbeat
        return float("nan") if last is None else time.monotonic() - last

    # -- Observer --------------------------------------------------------------------------
    def job_started(self, kind: str) -> None:
        self.running.labels(kind).inc()
        self.slots_used.inc()

    def job_finished(self, kind: str, destination: str, seconds: float, kill_reason: Optional[str]) -> None:
        self.running.labels(kind).dec()
        self.slots_used.dec()
        self.outcomes.labels(kind, self.result_of(destination)).inc()
        self.outcomes_sent.labels(destination).inc()
        self.duration.labels(kind).observe(seconds)
        if kill_reason:
            self.limit_kills.labels(kind, limit_of(kill_reason)).inc()

    def rejected(self, destination: str) -> None:
        self.rejected_messages.labels(destination).inc()

    def send_refused(self, destination: str, reason: str) -> None:
        self.refused.labels(destination).inc()

    def reconnected(self) -> None:
        with self._lock:
            self._connects += 1
            again = self._connects > 1
        if again:
            self.reconnects.inc()

    def heartbeat_sent(self) -> None:
        with self._lock:
            self._last_heartbeat = time.monotonic()

    def duplicate_delivery(self, how: str) -> None:
        self.duplicates.labels(how).inc()

    def control_state(self, draining: bool, paused: Mapping[str, float]) -> None:
        self.draining.set(1 if draining else 0)
        with self._lock:
            gone = [name for name in self._paused_now if name not in paused]
            self._paused_now = dict(paused)
        for name in gone:
            self.paused.remove(name)
            self.paused_since.remove(name)
        for name, since in paused.items():
            self.paused.labels(name).set(1)
            self.paused_since.labels(name).set(since)

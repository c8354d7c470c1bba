"""One fault-harness session: a broker, K agents on K hosts, load, faults, then the checks.

``Chaos(options).run()`` returns a ``Report``.  Everything random comes from one seed,
printed first, so a failing schedule can be replayed (timing on a busy machine still varies).
"""

import logging
import os
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from postprocessing.config import Config
from tests.support.chaos import brokers
from tests.support.chaos.client import ChaosClient
from tests.support.chaos.fleet import INSTRUMENT, IPTS, FleetAgent, Jobs, agent_config
from tests.support.chaos.invariants import TERMINAL, Fault, Figures, Request, check
from tests.support.chaos.network import Network

logger = logging.getLogger(__name__)

FAULT_KINDS = ("partition", "broker_kill", "agent_kill", "slow")
HEARTBEAT_TIMEOUT_SEC = 4.0  # twice stomp_heartbeat_ms in fleet.agent_config


@dataclass
class Options:
    broker: str = "activemq"
    seed: Optional[int] = None
    hosts: int = 3
    max_procs: int = 2
    load_sec: float = 90.0
    quiet_tail_sec: float = 20.0
    drain_sec: float = 60.0
    fault_gap_sec: tuple = (3.0, 6.0)
    partition_sec: tuple = (HEARTBEAT_TIMEOUT_SEC + 2, HEARTBEAT_TIMEOUT_SEC + 10)
    outage_sec: tuple = (1.0, 6.0)
    agent_down_sec: tuple = (1.0, 4.0)
    slow_sec: tuple = (5.0, 12.0)
    short_sec: tuple = (0.3, 2.0)
    long_sec: tuple = (10.0, 30.0)
    faults: tuple = FAULT_KINDS
    recovery_outages: tuple = (5.0,)
    reconnect_max_sec: Optional[float] = 2.0
    stall_sec: float = 6.0
    extra_config: Dict[str, Any] = field(default_factory=dict)
    workdir: Optional[str] = None


@dataclass
class Report:
    seed: int
    broker: str
    figures: Figures
    recovery_sec: List[Tuple[float, Optional[float]]]
    duration_sec: float
    stall_limit_sec: float

    def lines(self) -> List[str]:
        f = self.figures
        out = [
            "chaos on %s, seed %d, %.0f s" % (self.broker, self.seed, self.duration_sec),
            "  requests %d (runs %d), executions %d (%d killed with their agent, %d killed by something else)" % (
                f.requests, f.runs, f.executions, f.killed_with_agent, f.vanished),
            "  faults: %s" % (", ".join("%s %d" % kv for kv in sorted(f.faults.items())) or "none"),
        ]
        for name in Figures.VIOLATIONS:
            out.append("  %-24s %d%s" % (name, getattr(f, name), "" if not getattr(f, name) else "   <-- VIOLATED"))
        out.append("  resent after a lost receipt %d (the connection cut between the broker storing an outcome and"
                   " its receipt; 0 expected on Artemis)" % f.resent_after_lost_receipt)
        out.append("  longest stall           %.1f s (limit %.0f)" % (f.longest_stall_sec, self.stall_limit_sec))
        out.append("  time to drain           %s" % ("%.1f s" % f.drain_sec if f.drain_sec is not None else
                                                   "not drained" if f.faults else "no faults"))
        for outage, sec in self.recovery_sec:
            out.append("  broker recovery after a %.0f s outage: %s" % (
                outage, "%.1f s to the first run starting" % sec if sec is not None else "no run started"))
        for name, examples in sorted(f.examples.items()):
            out += ["  e.g. %s: %s" % (name, text) for text in examples]
        return out


class Chaos:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.seed = options.seed if options.seed is not None else random.SystemRandom().randrange(1, 10 ** 6)
        self.rng = random.Random(self.seed)
        self.workdir = options.workdir or tempfile.mkdtemp(prefix="pp-chaos-")
        self.requests: List[Request] = []
        self.faults: List[Fault] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._bodies: Dict[int, Dict[str, Any]] = {}
        self._read = 0
        self._answers: Dict[int, List[float]] = {}

    # -- set-up --------------------------------------------------------------------------------
    def run(self) -> Report:
        print("chaos: seed %d (broker %s, %d hosts x max_procs %d, workdir %s)" % (
            self.seed, self.o.broker, self.o.hosts, self.o.max_procs, self.workdir), flush=True)
        began = time.time()
        self.network = Network(self.o.hosts).create()
        self.broker: Any = None
        self.agents: List[FleetAgent] = []
        self.client: Optional[ChaosClient] = None
        try:
            self.broker = brokers.make_broker(self.o.broker, self.workdir, self.network.broker_address)
            self.jobs = Jobs(os.path.join(self.workdir, "data"))
            prefix = "CHAOS%d_%d" % (os.getpid(), self.seed)
            config = agent_config(self.broker, self.jobs.facility.root, prefix, self.o.max_procs,
                                  self.o.reconnect_max_sec, self.o.extra_config)
            self.dest = {("/queue/" + config[k] if not config[k].startswith("/") else config[k]): k
                         for k in TERMINAL + ("reduction_started", "reduction_data_ready", "reduction_cancel")}
            self.queue = {k: d for d, k in self.dest.items()}
            self.client = ChaosClient(self.broker, [self.queue[k] for k in TERMINAL + ("reduction_started",)])
            for host in self.network.hosts:
                agent = FleetAgent(self.workdir, host, self.network.exec_prefix(host), config)
                self.agents.append(agent.start())
            self._wait_connected()
            figures = self._session()
            recovery = [(outage, self._recovery(i, outage)) for i, outage in enumerate(self.o.recovery_outages)]
            return Report(self.seed, self.o.broker, figures, recovery, time.time() - began, self.o.stall_sec)
        finally:
            self._stop.set()
            for agent in self.agents:
                agent.stop(timeout=30)
            if self.client is not None:
                self.client.close()
            if self.broker is not None:
                self.broker.start()
                brokers.release(self.broker)
            self.network.remove()

    def _wait_connected(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not all("connected to broker" in a.log() for a in self.agents):
            if time.monotonic() > deadline:
                raise AssertionError("agents did not connect: %s" % [a.log()[-500:] for a in self.agents])
            time.sleep(0.2)

    # -- the session ---------------------------------------------------------------------------
    def _session(self) -> Figures:
        start = time.time()
        load_end = start + self.o.load_sec
        faults = threading.Thread(target=self._inject, args=(load_end - self.o.quiet_tail_sec,), daemon=True)
        faults.start()
        self._load(load_end)
        faults.join()
        self._drain(time.time() + self.o.drain_sec)
        time.sleep(3.0)
        assert self.client is not None
        executions = self.jobs.executions({a.host: a.kills for a in self.agents})
        bound = self.o.reconnect_max_sec if self.o.reconnect_max_sec is not None else Config.reconnect_max_sec
        settle = bound + HEARTBEAT_TIMEOUT_SEC
        return check(self.requests, self.client.outcomes(), self.dest, executions, self.faults,
                     self.network.hosts, self.o.max_procs, settle, self.o.stall_sec, (start, load_end))

    def _take_outcomes(self) -> None:
        """Note the terminal outcomes that arrived since the last call, per run."""
        assert self.client is not None
        new = self.client.outcomes(self._read)
        self._read += len(new)
        for when, dest, body in new:
            if self.dest.get(dest) in TERMINAL and str(body.get("run_number", "")).isdigit():
                self._answers.setdefault(int(body["run_number"]), []).append(when)

    def _answered(self, request: Request) -> bool:
        return any(t >= request.sent for t in self._answers.get(request.run, []))

    def _load(self, until: float) -> None:
        """Keep the fleet a little over full with new runs, re-requests and cancels."""
        assert self.client is not None
        target = self.o.hosts * self.o.max_procs + 2
        latest: Dict[int, Request] = {}
        answered: Dict[int, float] = {}
        while time.time() < until:
            self._take_outcomes()
            for run, request in latest.items():
                if run not in answered and self._answered(request):
                    answered[run] = time.time()
            open_runs = [run for run in latest if run not in answered]
            finished = [run for run in latest if run in answered]
            roll = self.rng.random()
            if roll < 0.04 and open_runs:
                self._cancel(latest[self.rng.choice(open_runs)])
            elif roll < 0.06 and finished:
                self._cancel(latest[self.rng.choice(finished)])
            elif len(open_runs) < target:
                if finished and self.rng.random() < 0.25:
                    run = self.rng.choice(finished)
                    del answered[run]
                    latest[run] = self._send(run, latest[run].kind, latest[run].generation + 1)
                else:
                    run = len(latest) + 1
                    kind = self.rng.choice(("short", "short", "short", "long", "fail"))
                    latest[run] = self._send(run, kind, 1)
            time.sleep(0.2)

    def _send(self, run: int, kind: str, generation: int) -> Request:
        assert self.client is not None
        low, high = self.o.long_sec if kind == "long" else self.o.short_sec
        sleep = round(self.rng.uniform(low, high), 2)
        if generation == 1:
            self._bodies[run] = self.jobs.request(run, sleep, kind == "fail")
        body = self._bodies[run]
        request = Request(len(self.requests) + 1, run, kind, time.time(), generation)
        with self._lock:
            self.requests.append(request)
        self.client.send_confirmed(self.queue["reduction_data_ready"], body)
        return request

    def _cancel(self, request: Request) -> None:
        assert self.client is not None
        request.cancels.append(time.time())
        self.client.send_confirmed(self.queue["reduction_cancel"], {
            "instrument": INSTRUMENT, "ipts": IPTS, "run_number": str(request.run), "cancel": True,
            "information": "chaos harness"})

    def _drain(self, deadline: float) -> None:
        assert self.client is not None
        while time.time() < deadline:
            self.client.ensure_connected()
            self._take_outcomes()
            if all(self._answered(r) for r in self.requests):
                return
            time.sleep(0.5)

    # -- faults --------------------------------------------------------------------------------
    def _inject(self, until: float) -> None:
        """Faults one at a time, each healed before the next, until ``until``.

        They come in rounds: every kind once per round, in an order drawn from the seed.
        """
        kinds: List[str] = []
        while not self._stop.is_set():
            gap = self.rng.uniform(*self.o.fault_gap_sec)
            if not kinds:
                kinds = list(self.o.faults)
                self.rng.shuffle(kinds)
            kind = kinds.pop()
            host = self.rng.choice(self.network.hosts)
            length = self.rng.uniform(*{"partition": self.o.partition_sec, "broker_kill": self.o.outage_sec,
                                        "agent_kill": self.o.agent_down_sec, "slow": self.o.slow_sec}[kind])
            if time.time() + gap + length > until:
                return
            time.sleep(gap)
            began = time.time()
            print("chaos: %s %s for %.1f s" % (kind, host if kind in ("partition", "agent_kill") else "",
                                                length), flush=True)
            self._fault(kind, host, length)
            self.faults.append(Fault(kind, host, began, time.time()))

    def _fault(self, kind: str, host: str, length: float) -> None:
        if kind == "partition":
            self.network.partition(host)
            time.sleep(length)
            self.network.heal(host)
        elif kind == "slow":
            self.network.slow(True)
            time.sleep(length)
            self.network.slow(False)
        elif kind == "agent_kill":
            agent = self.agents[self.network.hosts.index(host)]
            connects = agent.log().count("connected to broker")
            agent.kill(time.time())
            time.sleep(length)
            agent.start()
            deadline = time.monotonic() + 60.0
            while agent.log().count("connected to broker") <= connects and time.monotonic() < deadline:
                time.sleep(0.2)
        else:
            assert self.client is not None
            with self.client.send_lock:
                self.broker.kill()
            time.sleep(length)
            self.broker.start()

    # -- broker recovery -----------------------------------------------------------------------
    def _recovery(self, index: int, outage: float) -> Optional[float]:
        """Seconds from the broker answering again after ``outage`` to a run sent then starting."""
        assert self.client is not None
        with self.client.send_lock:
            self.broker.kill()
        print("chaos: broker down for %.0f s to measure recovery" % outage, flush=True)
        time.sleep(outage)
        self.broker.start()
        back = time.time()
        run = 900000 + index
        self.client.send_confirmed(self.queue["reduction_data_ready"], self.jobs.request(run, 0.1, False))
        deadline = back + 90.0
        while time.time() < deadline:
            starts = [e.start for e in self.jobs.executions({}) if e.run == run]
            if starts:
                return min(starts) - back
            time.sleep(0.1)
        return None

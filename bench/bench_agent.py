"""Benchmark: start a private broker and the agent, publish runs, print the figures.

    python3 bench/bench_agent.py [--brokers activemq,artemis,rabbitmq] [--runs 200] [--json FILE]

Each broker kind is measured in turn (ActiveMQ Classic, Artemis and a private RabbitMQ node)
and the figures are printed side by side.

Figures: the floors (a bare ``python3 -c pass`` spawn, a STOMP send->receive round
trip, and a bare stomp.py relay that receives a message and sends one on, the two broker
hops a dispatch makes, both back-to-back and at the dispatch figure's pace of one message
per no-op run), dispatch overhead (DATA_READY sent -> STARTED received, p50/p95, no-op
script, one run at a time), no-op throughput at max_procs 4, makespan and efficiency of 16
one-second jobs at max_procs 4, memory-limit reaction time, ping answer time while a
long job runs, and agent RSS idle and under load.  Targets are printed beside each figure;
nothing here asserts.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List

import psutil
import stomp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from postprocessing.devtools.activemq import LocalActiveMQ  # noqa: E402
from postprocessing.devtools.artemis import LocalArtemis  # noqa: E402
from postprocessing.devtools.rabbitmq_local import LocalRabbitMQ  # noqa: E402
from postprocessing.transport.stomp import prefetch_headers  # noqa: E402
from tests.support.agentproc import AgentProcess, queue_names  # noqa: E402
from tests.support.client import Collector  # noqa: E402
from tests.support.facility import Facility  # noqa: E402

NOOP = "pass\n"
SLEEP_1S = "import time\ntime.sleep(1)\n"
#: Run with python_exec /bin/sh: exactly one second, with no interpreter start-up.
SH_SLEEP_1S = "sleep 1\n"
MEMORY_HOG = """
import sys, time
with open(sys.argv[2] + "allocated_at", "w") as marker:
    marker.write(repr(time.time()))
block = bytearray(%d * 1024 * 1024)
time.sleep(60)
"""


def pct(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def spawn_floor(n: int = 30) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


STARTERS = {"activemq": LocalActiveMQ, "artemis": LocalArtemis, "rabbitmq": LocalRabbitMQ}
TITLES = {"activemq": "ActiveMQ Classic", "artemis": "Artemis", "rabbitmq": "RabbitMQ"}


def vhost(broker: Any) -> Any:
    return "/" if broker.kind == "rabbitmq" else None


def relay_floor(broker: Any, client: Collector, n: int = 200, gap: float = 0.0) -> float:
    """DATA_READY -> STARTED with nothing in between: a client that only relays.

    ``gap`` idles the broker and both clients between messages, as the dispatch figure's
    one-run-at-a-time cadence does: waking from idle costs a few milliseconds that
    back-to-back messages never pay.
    """
    queue_in, out = "/queue/BENCH.RELAY%g.IN" % gap, "/queue/BENCH.RELAY%g.OUT" % gap
    relay = stomp.Connection12([("127.0.0.1", broker.port)], auto_decode=False, vhost=vhost(broker))

    class Relay(stomp.ConnectionListener):  # type: ignore[misc]
        def on_message(self, frame: Any) -> None:
            relay.send(out, frame.body, headers={"persistent": "true", "receipt": "r"})
            relay.ack(frame.headers["ack"])

    relay.set_listener("relay", Relay())
    relay.connect(broker.user, broker.password, wait=True)
    relay.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    relay.subscribe(queue_in, id="relay", ack="client-individual", headers=prefetch_headers(broker.kind, 1))
    client.subscribe(out)
    times = []
    for i in range(n):
        time.sleep(gap)
        t0 = time.monotonic()
        client.send(queue_in, {"i": i})
        client.wait(out, i + 1, timeout=10)
        times.append(client.times[out][i] - t0)
    relay.disconnect()
    return statistics.median(times)


def stomp_floor(client: Collector, n: int = 200) -> float:
    dest = "/queue/BENCH.ROUNDTRIP"
    client.subscribe(dest)
    times = []
    for i in range(n):
        t0 = time.monotonic()
        client.send(dest, {"i": i})
        client.wait(dest, i + 1, timeout=10)
        times.append(client.times[dest][i] - t0)
    return statistics.median(times)


def ping_during_long_job(bench: "Bench", n: int = 10) -> List[float]:
    """Seconds from a ping to the agent's answer, while the agent runs a long job."""
    bench.facility.script("LONG", "import time\ntime.sleep(60)\n")
    agent = bench.agent("ping", max_procs=1)
    bench.send(agent, "LONG")
    bench.client.wait(agent.q("reduction_started"), 1, timeout=30)
    reply = "/topic/BENCH.PING.REPLY"
    bench.client.subscribe(reply)
    times = []
    for i in range(n):
        t0 = time.monotonic()
        bench.client.send(agent.q("heartbeat_ping"), {"reply_to": reply, "ping_id": str(i)},
                          headers={"persistent": "false"})
        bench.client.wait(reply, i + 1, timeout=10)
        times.append(bench.client.times[reply][i] - t0)
        time.sleep(0.5)
    agent.kill()
    return times


class Bench:
    def __init__(self, workdir: str, broker: Any) -> None:
        self.workdir = workdir
        self.broker = broker
        self.facility = Facility(os.path.join(workdir, "data"))
        os.makedirs(self.facility.root, exist_ok=True)
        self.client = Collector(broker.port, broker.user, broker.password, vhost=vhost(broker))
        self.count = 0
        self.agents: List[AgentProcess] = []

    def agent(self, name: str, **overrides: Any) -> AgentProcess:
        cfg: Dict[str, Any] = {
            "brokers": [["127.0.0.1", self.broker.port]], "amq_user": self.broker.user,
            "amq_pwd": self.broker.password,
            "data_root": self.facility.root, "admission_max_load_per_cpu": 0, "admission_min_free_mem_perc": 0,
            "jobs_per_instrument": 0, "allow_root": True, "python_exec": sys.executable,
        }
        cfg.update(queue_names("BENCH_%s" % name))
        cfg.update(overrides)
        agent = AgentProcess(self.workdir, cfg, name=name)
        self.agents.append(agent)
        self.client.subscribe(*(agent.q(k) for k in ("reduction_started", "reduction_complete",
                                                      "reduction_error", "postprocess_error")))
        return agent.start()

    def close(self) -> None:
        """Kill any agent still running, disconnect, and stop the broker."""
        for agent in self.agents:
            agent.kill()
        self.client.close()
        self.broker.stop()

    def send(self, agent: AgentProcess, inst: str) -> None:
        self.count += 1
        self.client.send(agent.q("reduction_data_ready"), self.facility.run(inst, "IPTS-1", self.count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", default="activemq,artemis,rabbitmq",
                        help="comma-separated broker kinds to measure (default: all three)")
    parser.add_argument("--runs", type=int, default=200, help="no-op runs for the throughput figure")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    results: Dict[str, Dict[str, float]] = {}
    for kind in [k for k in args.brokers.split(",") if k]:
        workdir = tempfile.mkdtemp(prefix="pp-bench-%s-" % kind)
        print("bench: measuring on %s in %s" % (TITLES[kind], workdir), flush=True)
        results[kind] = measure(STARTERS[kind](os.path.join(workdir, "broker")).start(), workdir, args.runs)
    report(results)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)


def measure(broker: Any, workdir: str, runs: int) -> Dict[str, float]:
    figures: Dict[str, float] = {}
    bench = Bench(workdir, broker)
    try:
        figures["floor_spawn_ms"] = spawn_floor() * 1000
        figures["floor_stomp_roundtrip_ms"] = stomp_floor(bench.client) * 1000
        figures["floor_relay_ms"] = relay_floor(broker, bench.client) * 1000

        bench.facility.script("NOOP", NOOP)
        agent = bench.agent("noop", max_procs=4)
        time.sleep(1.0)
        figures["rss_idle_mb"] = psutil.Process(agent.pid).memory_info().rss / 1e6
        started, complete = agent.q("reduction_started"), agent.q("reduction_complete")
        overheads, cycles = [], []
        for i in range(40):
            t0 = time.monotonic()
            bench.send(agent, "NOOP")
            bench.client.wait(complete, i + 1, timeout=30)
            overheads.append(bench.client.times[started][i] - t0)
            cycles.append(bench.client.times[complete][i] - t0)
        figures["dispatch_p50_ms"] = pct(overheads, 0.5) * 1000
        figures["dispatch_p95_ms"] = pct(overheads, 0.95) * 1000
        figures["dispatch_cycle_ms"] = statistics.median(cycles) * 1000
        figures["floor_relay_paced_ms"] = relay_floor(broker, bench.client, n=40, gap=statistics.median(cycles)) * 1000

        peak_rss = [0.0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.1):
                peak_rss[0] = max(peak_rss[0], psutil.Process(agent.pid).memory_info().rss / 1e6)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        base = len(bench.client.get(complete))
        t0 = time.monotonic()
        for _ in range(runs):
            bench.send(agent, "NOOP")
        bench.client.wait(complete, base + runs, timeout=600)
        figures["noop_runs_per_s"] = runs / (time.monotonic() - t0)
        stop.set()
        figures["rss_load_mb"] = peak_rss[0]
        agent.stop()

        bench.facility.script("TRUE", NOOP)
        agent = bench.agent("true", max_procs=4, python_exec="/bin/true")
        t0 = time.monotonic()
        for _ in range(runs):
            bench.send(agent, "TRUE")
        bench.client.wait(agent.q("reduction_complete"), runs, timeout=600)
        figures["true_runs_per_s"] = runs / (time.monotonic() - t0)
        agent.stop()

        bench.facility.script("SLEEP", SLEEP_1S)
        agent = bench.agent("sleep", max_procs=4)
        t0 = time.monotonic()
        for _ in range(16):
            bench.send(agent, "SLEEP")
        bench.client.wait(agent.q("reduction_complete"), 16, timeout=120)
        makespan = time.monotonic() - t0
        figures["makespan_16x1s_s"] = makespan
        figures["efficiency_pct"] = 100.0 * 4.0 / makespan
        agent.stop()

        bench.facility.script("SHSLEEP", SH_SLEEP_1S)
        agent = bench.agent("shsleep", max_procs=4, python_exec="/bin/sh")
        t0 = time.monotonic()
        for _ in range(16):
            bench.send(agent, "SHSLEEP")
        bench.client.wait(agent.q("reduction_complete"), 16, timeout=120)
        figures["makespan_16x1s_sh_s"] = time.monotonic() - t0
        figures["efficiency_sh_pct"] = 100.0 * 4.0 / figures["makespan_16x1s_sh_s"]
        agent.stop()

        limit_mb = 200
        bench.facility.script("HOG", MEMORY_HOG % (limit_mb * 3))
        perc = 100.0 * limit_mb * 1024 * 1024 / psutil.virtual_memory().total
        agent = bench.agent("hog", system_mem_limit_perc=round(perc, 4), mem_check_interval_sec=0.2)
        reactions = []
        for i in range(5):
            bench.send(agent, "HOG")
            bench.client.wait(agent.q("reduction_error"), i + 1, timeout=60)
            errored = bench.client.times[agent.q("reduction_error")][i]
            marker = os.path.join(bench.facility.output_dir("HOG", "IPTS-1"), "allocated_at")
            allocated = float(open(marker).read())
            reactions.append(errored - (allocated - time.time() + time.monotonic()))
            os.remove(marker)
        figures["memory_reaction_max_s"] = max(reactions)
        figures["memory_reaction_p50_s"] = statistics.median(reactions)
        agent.stop()

        pings = ping_during_long_job(bench)
        figures["ping_busy_p50_ms"] = statistics.median(pings) * 1000
        figures["ping_busy_max_ms"] = max(pings) * 1000
    finally:
        bench.close()
    return figures


#: (figure, target, how to print one broker's figures)
ROWS = [
    ("floor: python3 -c pass spawn", "", lambda f: "%.1f ms" % f["floor_spawn_ms"]),
    ("floor: STOMP send->receive, back-to-back", "", lambda f: "%.2f ms" % f["floor_stomp_roundtrip_ms"]),
    ("floor: STOMP relay (2 hops), back-to-back", "", lambda f: "%.2f ms" % f["floor_relay_ms"]),
    ("floor: the relay at the dispatch cadence", "", lambda f: "%.2f ms (every %.0f ms)" % (
        f["floor_relay_paced_ms"], f["dispatch_cycle_ms"])),
    ("dispatch overhead p50", "<= 3x floor", lambda f: "%.2f ms = %.1fx paced, %.1fx b2b relay" % (
        f["dispatch_p50_ms"], f["dispatch_p50_ms"] / max(f["floor_relay_paced_ms"], 0.001),
        f["dispatch_p50_ms"] / max(f["floor_relay_ms"], 0.001))),
    ("dispatch overhead p95", "", lambda f: "%.2f ms" % f["dispatch_p95_ms"]),
    ("no-op throughput, max_procs 4, python3", ">= 30 runs/s", lambda f: "%.1f runs/s" % f["noop_runs_per_s"]),
    ("  same, job is /bin/true (agent alone)", "", lambda f: "%.1f runs/s" % f["true_runs_per_s"]),
    ("16 x 1 s jobs, max_procs 4, python3", ">= 90%", lambda f: "%.2f s, %.1f%%" % (
        f["makespan_16x1s_s"], f["efficiency_pct"])),
    ("  same, sh: sleep 1 (agent alone)", ">= 90%", lambda f: "%.2f s, %.1f%%" % (
        f["makespan_16x1s_sh_s"], f["efficiency_sh_pct"])),
    ("memory-limit reaction p50 / max", "<= 1 s", lambda f: "%.2f / %.2f s" % (
        f["memory_reaction_p50_s"], f["memory_reaction_max_s"])),
    ("ping answer during a long job p50 / max", "", lambda f: "%.1f / %.1f ms" % (
        f["ping_busy_p50_ms"], f["ping_busy_max_ms"])),
    ("agent RSS idle", "<= 60 MB", lambda f: "%.1f MB" % f["rss_idle_mb"]),
    ("agent RSS under load (peak)", "", lambda f: "%.1f MB" % f["rss_load_mb"]),
]


def report(results: Dict[str, Dict[str, float]]) -> None:
    """One row per figure, one column per broker, the target last (a Markdown table)."""
    kinds = list(results)
    print("| figure | %s | target |" % " | ".join(TITLES[k] for k in kinds))
    print("| --- |%s --- |" % (" --- |" * len(kinds)))
    for name, target, show in ROWS:
        print("| %s | %s | %s |" % (name, " | ".join(show(results[k]) for k in kinds), target))


if __name__ == "__main__":
    main()

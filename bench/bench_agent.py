"""Benchmark: start a private ActiveMQ and the agent, publish runs, print the figures.

    python3 bench/bench_agent.py [--runs 200] [--json FILE]

Figures: the floors (a bare ``python3 -c pass`` spawn, a STOMP send->receive round
trip, and a bare stomp.py relay that receives a message and sends one on, the two broker
hops a dispatch makes, both back-to-back and at the dispatch figure's pace of one message
per no-op run), dispatch overhead (DATA_READY sent -> STARTED received, p50/p95, no-op
script, one run at a time), no-op throughput at max_procs 4, makespan and efficiency of 16
one-second jobs at max_procs 4, memory-limit reaction time, and agent RSS idle and
under load.  Targets are printed beside each figure; nothing here asserts.
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


def relay_floor(broker: LocalActiveMQ, client: Collector, n: int = 200, gap: float = 0.0) -> float:
    """DATA_READY -> STARTED with nothing in between: a client that only relays.

    ``gap`` idles the broker and both clients between messages, as the dispatch figure's
    one-run-at-a-time cadence does: waking from idle costs a few milliseconds that
    back-to-back messages never pay.
    """
    queue_in, out = "/queue/BENCH.RELAY%g.IN" % gap, "/queue/BENCH.RELAY%g.OUT" % gap
    relay = stomp.Connection12([("127.0.0.1", broker.port)], auto_decode=False)

    class Relay(stomp.ConnectionListener):  # type: ignore[misc]
        def on_message(self, frame: Any) -> None:
            relay.send(out, frame.body, headers={"persistent": "true", "receipt": "r"})
            relay.ack(frame.headers["ack"])

    relay.set_listener("relay", Relay())
    relay.connect("icat", "icat", wait=True)
    relay.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    relay.subscribe(queue_in, id="relay", ack="client-individual",
                    headers={"activemq.prefetchSize": "1"})
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


class Bench:
    def __init__(self, workdir: str, broker: LocalActiveMQ) -> None:
        self.workdir = workdir
        self.broker = broker
        self.facility = Facility(os.path.join(workdir, "data"))
        os.makedirs(self.facility.root, exist_ok=True)
        self.client = Collector(broker.port)
        self.count = 0
        self.agents: List[AgentProcess] = []

    def agent(self, name: str, **overrides: Any) -> AgentProcess:
        cfg: Dict[str, Any] = {
            "brokers": [["127.0.0.1", self.broker.port]], "amq_user": "icat", "amq_pwd": "icat",
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
    parser.add_argument("--runs", type=int, default=200, help="no-op runs for the throughput figure")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="pp-bench-")
    broker = LocalActiveMQ(os.path.join(workdir, "broker")).start()
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
        for _ in range(args.runs):
            bench.send(agent, "NOOP")
        bench.client.wait(complete, base + args.runs, timeout=600)
        figures["noop_runs_per_s"] = args.runs / (time.monotonic() - t0)
        stop.set()
        figures["rss_load_mb"] = peak_rss[0]
        agent.stop()

        bench.facility.script("TRUE", NOOP)
        agent = bench.agent("true", max_procs=4, python_exec="/bin/true")
        t0 = time.monotonic()
        for _ in range(args.runs):
            bench.send(agent, "TRUE")
        bench.client.wait(agent.q("reduction_complete"), args.runs, timeout=600)
        figures["true_runs_per_s"] = args.runs / (time.monotonic() - t0)
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
    finally:
        bench.close()
    report(figures)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=1)


def report(f: Dict[str, float]) -> None:
    floor = max(f["floor_stomp_roundtrip_ms"], 0.001)
    relay = max(f["floor_relay_ms"], 0.001)
    paced = max(f["floor_relay_paced_ms"], 0.001)
    rows = [
        ("floor: python3 -c pass spawn", "%.1f ms" % f["floor_spawn_ms"], ""),
        ("floor: STOMP send->receive", "%.2f ms (back-to-back)" % f["floor_stomp_roundtrip_ms"], ""),
        ("floor: STOMP relay (2 hops)", "%.2f ms (back-to-back)" % f["floor_relay_ms"], ""),
        ("  same, one every %.0f ms" % f["dispatch_cycle_ms"], "%.2f ms (the dispatch figure's cadence)" % paced, ""),
        ("dispatch overhead p50", "%.2f ms (%.1fx paced relay; %.1fx relay, %.1fx round trip back-to-back)" % (
            f["dispatch_p50_ms"], f["dispatch_p50_ms"] / paced, f["dispatch_p50_ms"] / relay,
            f["dispatch_p50_ms"] / floor), "<= 3x floor"),
        ("dispatch overhead p95", "%.2f ms" % f["dispatch_p95_ms"], ""),
        ("no-op throughput, max_procs 4", "%.1f runs/s (python3 script)" % f["noop_runs_per_s"], ">= 30 runs/s"),
        ("  same, job is /bin/true", "%.1f runs/s (the agent alone)" % f["true_runs_per_s"], ""),
        ("16 x 1 s jobs, max_procs 4", "%.2f s makespan, %.1f%% efficiency (python3 sleep)" % (
            f["makespan_16x1s_s"], f["efficiency_pct"]), ">= 90%"),
        ("  same, job is sh: sleep 1", "%.2f s makespan, %.1f%% efficiency (the agent alone)" % (
            f["makespan_16x1s_sh_s"], f["efficiency_sh_pct"]), ">= 90%"),
        ("memory-limit reaction", "p50 %.2f s, max %.2f s" % (
            f["memory_reaction_p50_s"], f["memory_reaction_max_s"]), "<= 1 s"),
        ("agent RSS idle", "%.1f MB" % f["rss_idle_mb"], "<= 60 MB"),
        ("agent RSS under load (peak)", "%.1f MB" % f["rss_load_mb"], ""),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print("%-*s  %-45s %s" % (width, name, value, target))


if __name__ == "__main__":
    main()

"""Fleet bench: 1, 2 and 4 agents, each at max_procs 4, on one broker, 2,000 no-op runs each time.

    python3 bench/bench_fleet.py [--runs 2000] [--fleets 1,2,4] [--broker activemq|rabbitmq]

For each fleet it prints the throughput beside the fleet's spawn ceiling (the same no-op
job spawned by as many parallel workers as the fleet has slots, with no agent and no
broker: what the machine allows), each agent's share of the runs, the broker's CPU
(psutil on the broker process, in % of one core) and the most jobs any agent ran at once
(sampled; its limit is max_procs).  Exits 1 when runs were lost or an agent exceeded its slots.
"""

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Tuple

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from postprocessing.devtools import activemq, rabbitmq_local  # noqa: E402
from postprocessing.jobs.environment import MARKER, agent_identity  # noqa: E402
from tests.support.agentproc import AgentProcess, queue_names  # noqa: E402
from tests.support.client import Collector  # noqa: E402
from tests.support.facility import Facility  # noqa: E402

MAX_PROCS = 4
INST = "FLEET"
#: The no-op job: it only notes which agent ran it, so that shares can be counted.
NOOP = "import os, sys\nopen(sys.argv[2] + os.path.basename(sys.argv[1]) + '.agent', 'w')" \
       ".write(os.environ['POSTPROCESSING_AGENT_ID'])\n"


def spawn_ceiling(script: str, data_file: str, out_dir: str, workers: int, n: int) -> float:
    """Runs/s when ``workers`` threads spawn the no-op job back to back: the machine's limit."""
    # Jobs run in sessions of their own, marked with a live agent's identity: an agent starting
    # meanwhile on this machine reaps marked processes whose "agent" is dead, with their group.
    env = dict(os.environ, **{MARKER: agent_identity(os.getpid())})

    def one(_: int) -> None:
        subprocess.run([sys.executable, script, data_file, out_dir], check=True, env=env, start_new_session=True)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(workers)))
        t0 = time.perf_counter()
        list(pool.map(one, range(n)))
        return n / (time.perf_counter() - t0)


class SlotWatch(threading.Thread):
    """Samples each agent's job processes (its direct children) until stopped."""

    def __init__(self, agents: List[AgentProcess]) -> None:
        super().__init__(daemon=True)
        self.procs = [psutil.Process(a.pid) for a in agents]
        self.peak = [0] * len(agents)
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            for i, proc in enumerate(self.procs):
                try:
                    self.peak[i] = max(self.peak[i], len(proc.children()))
                except psutil.Error:
                    pass
            time.sleep(0.005)


def broker_process(broker: Any) -> psutil.Process:
    """The broker's VM: for RabbitMQ, the Erlang VM its start script runs."""
    proc = psutil.Process(broker.proc.pid)
    beams = [p for p in proc.children(recursive=True) if p.name().startswith("beam")]
    return beams[0] if beams else proc


def fleet_run(broker: Any, workdir: str, agents_n: int, runs: int) -> Dict[str, Any]:
    facility = Facility(os.path.join(workdir, "fleet%d" % agents_n, "data"))
    os.makedirs(facility.root)
    script = facility.script(INST, NOOP)
    prefix = "FLEET%d_%d" % (os.getpid(), agents_n)
    cfg: Dict[str, Any] = {
        "brokers": [["127.0.0.1", broker.port]], "amq_user": broker.user, "amq_pwd": broker.password,
        "broker_type": broker.kind, "data_root": facility.root, "admission_max_load_per_cpu": 0,
        "admission_min_free_mem_perc": 0, "jobs_per_instrument": 0, "allow_root": True, "job_nice": 0,
        "python_exec": sys.executable, "max_procs": MAX_PROCS,
    }
    cfg.update(queue_names(prefix))
    bodies = [facility.run(INST, "IPTS-1", n) for n in range(1, runs + 1)]
    out_dir = facility.output_dir(INST, "IPTS-1")
    os.makedirs(out_dir, exist_ok=True)
    ceiling = spawn_ceiling(script, bodies[0]["data_file"], out_dir + os.sep, agents_n * MAX_PROCS,
                            max(100, 50 * agents_n))
    for name in os.listdir(out_dir):
        os.remove(os.path.join(out_dir, name))
    client = Collector(broker.port, broker.user, broker.password,
                       vhost="/" if broker.kind == "rabbitmq" else None)
    agents = [AgentProcess(os.path.join(workdir, "fleet%d" % agents_n), cfg, name="agent%d" % i)
              for i in range(agents_n)]
    complete = agents[0].q("reduction_complete")
    client.subscribe(complete, agents[0].q("reduction_error"), agents[0].q("postprocess_error"))
    try:
        for agent in agents:
            agent.start()
        watch = SlotWatch(agents)
        watch.start()
        brokerp = broker_process(broker)
        cpu0 = sum(brokerp.cpu_times()[:2])
        t0 = time.monotonic()
        for body in bodies:
            client.send(agents[0].q("reduction_data_ready"), body)
        client.wait(complete, runs, timeout=max(600.0, runs / 2.0))
        elapsed = time.monotonic() - t0
        cpu = sum(brokerp.cpu_times()[:2]) - cpu0
        watch.stopped.set()
        watch.join()
        time.sleep(1.0)
        got = collections.Counter(m["run_number"] for m in client.get(complete))
        identities = {"%d:" % a.pid: "agent%d" % i for i, a in enumerate(agents)}
        shares: Dict[str, int] = collections.Counter()
        for name in os.listdir(out_dir):
            if name.endswith(".agent"):
                with open(os.path.join(out_dir, name), encoding="utf-8") as handle:
                    who = handle.read()
                shares[next((v for k, v in identities.items() if who.startswith(k)), "?")] += 1
        return {"agents": agents_n, "runs": runs, "seconds": elapsed, "throughput": runs / elapsed,
                "ceiling": ceiling, "shares": [shares["agent%d" % i] for i in range(agents_n)],
                "broker_cpu_pct": 100.0 * cpu / elapsed, "peak_jobs": watch.peak,
                "lost": runs - len(got), "duplicates": sum(n - 1 for n in got.values()),
                "errors": len(client.get(agents[0].q("reduction_error")))}
    finally:
        for agent in agents:
            agent.kill()
        client.close()


def report(rows: List[Dict[str, Any]]) -> Tuple[List[str], bool]:
    lines = ["%-7s %-6s %-16s %-22s %-7s %-26s %-12s %-16s %s" % (
        "agents", "slots", "throughput", "spawn ceiling (floor)", "ratio", "share per agent", "broker CPU",
        "peak jobs/agent", "lost/dup/err")]
    ok = True
    for r in rows:
        ok = ok and not r["lost"] and not r["duplicates"] and max(r["peak_jobs"]) <= MAX_PROCS
        lines.append("%-7d %-6d %-16s %-22s %-7s %-26s %-12s %-16s %d/%d/%d" % (
            r["agents"], r["agents"] * MAX_PROCS, "%.1f runs/s" % r["throughput"], "%.1f runs/s" % r["ceiling"],
            "%.0f%%" % (100.0 * r["throughput"] / r["ceiling"]),
            " ".join("%.0f%%" % (100.0 * s / r["runs"]) for s in r["shares"]),
            "%.0f%% of 1 core" % r["broker_cpu_pct"], "%s (max %d)" % (",".join(map(str, r["peak_jobs"])), MAX_PROCS),
            r["lost"], r["duplicates"], r["errors"]))
    return lines, ok


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--fleets", default="1,2,4")
    parser.add_argument("--broker", default="activemq", choices=("activemq", "rabbitmq"))
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="pp-fleet-")
    starter: Any = rabbitmq_local.LocalRabbitMQ if args.broker == "rabbitmq" else activemq.LocalActiveMQ
    broker = starter(os.path.join(workdir, "broker")).start()
    print("fleet bench: %d no-op runs per fleet, max_procs %d per agent, %s, %d CPUs" % (
        args.runs, MAX_PROCS, args.broker, os.cpu_count() or 0), flush=True)
    rows = []
    try:
        for n in (int(x) for x in args.fleets.split(",")):
            rows.append(fleet_run(broker, workdir, n, args.runs))
            print("  %d agent(s): %.1f runs/s" % (n, rows[-1]["throughput"]), flush=True)
    finally:
        broker.stop()
    lines, ok = report(rows)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The long fault harness: K agents on K hosts (network namespaces) under faults for N minutes.

    python3 bench/chaos.py [--broker activemq] [--minutes 20] [--seed S] [--hosts 4] [--max-procs 2]
                           [--faults partition,broker_kill,agent_kill,slow] [--recovery 5,300]
                           [--reconnect-max-sec SEC] [--agent-config KEY=JSON ...] [--record]

Prints the seed first, then the invariant figures (all must be 0), the time to drain after
the last fault, and the broker recovery times (broker back -> first queued run starting)
after each outage in ``--recovery``.  ``--record`` writes the figures as a Reliability row
to build/reliability/chaos_<broker>.json (``make reliability-table`` puts it in the README).
Exits 1 when an invariant is violated.  Needs root.  ``make chaos`` runs it per broker;
``tests/test_fire_chaos.py`` is the short version inside ``make test``.
"""

import argparse
import json
import os
import sys
from typing import Any, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support import reliability  # noqa: E402
from tests.support.chaos.harness import FAULT_KINDS, HEARTBEAT_TIMEOUT_SEC, Chaos, Options, Report  # noqa: E402

BROKER_NAMES = {"activemq": "ActiveMQ", "rabbitmq": "RabbitMQ", "artemis": "Artemis"}


def config_item(text: str) -> Tuple[str, Any]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def options(args: argparse.Namespace) -> Options:
    return Options(
        broker=args.broker, seed=args.seed, hosts=args.hosts, max_procs=args.max_procs,
        load_sec=args.minutes * 60.0, quiet_tail_sec=60.0, drain_sec=300.0, fault_gap_sec=(10.0, 40.0),
        partition_sec=(HEARTBEAT_TIMEOUT_SEC + 2, 60.0), outage_sec=(1.0, 20.0), agent_down_sec=(1.0, 10.0),
        slow_sec=(10.0, 60.0), short_sec=(0.3, 5.0), long_sec=(20.0, 120.0),
        faults=tuple(args.faults.split(",")), recovery_outages=tuple(float(x) for x in args.recovery.split(",") if x),
        reconnect_max_sec=args.reconnect_max_sec, stall_sec=15.0, extra_config=dict(args.agent_config))


def record(report: Report, args: argparse.Namespace) -> None:
    f = report.figures
    faults = ", ".join("%d %s" % (n, kind.replace("_", " ")) for kind, n in sorted(f.faults.items()))
    recovery = "; ".join("after a %.0f s outage the first queued run started %s" % (
        outage, "%.1f s after the broker came back" % sec if sec is not None else "never")
        for outage, sec in report.recovery_sec)
    reliability.save({"chaos_" + args.broker: {
        "done": "`make chaos`: %d agents on %d hosts (network namespaces) at max_procs %d, %.0f min of mixed "
                "short, long and failing runs, re-requests and cancels through %s; %d faults (%s); seed %d" % (
                    args.hosts, args.hosts, args.max_procs, args.minutes, BROKER_NAMES.get(args.broker, args.broker),
                    sum(f.faults.values()), faults, report.seed),
        "observed": "%d requests: %d lost, %d overlapping executions, %d repeated executions after the outcome, "
                    "%d duplicate outcomes, %d re-requests not run, %d cancels that silenced a later request, "
                    "%d busy stalls; %d outcomes sent again after their receipt was lost with the connection "
                    "(Artemis drops the copy; ActiveMQ Classic and RabbitMQ deliver it); drained %s after the "
                    "last fault; %s" % (
                        f.requests, f.lost, f.overlapping, f.repeated_after_confirm, f.duplicate_outcomes,
                        f.rerequests_not_run, f.cancels_silencing, f.busy_stalls, f.resent_after_lost_receipt,
                        "%.0f s" % f.drain_sec if f.drain_sec is not None else "never", recovery)}})


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default="activemq")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--max-procs", type=int, default=2)
    parser.add_argument("--faults", default=",".join(FAULT_KINDS))
    parser.add_argument("--recovery", default="5,300", help="broker outages (s) to measure recovery after")
    parser.add_argument("--reconnect-max-sec", type=float, help="the agents' backoff bound (default: theirs)")
    parser.add_argument("--record", action="store_true", help="write a Reliability row to build/reliability")
    parser.add_argument("--agent-config", type=config_item, action="append", default=[], metavar="KEY=JSON",
                        help="an agent config entry; {host} in a string becomes the host (repeatable)")
    args = parser.parse_args(argv)
    unknown = set(args.faults.split(",")) - set(FAULT_KINDS)
    if unknown:
        parser.error("unknown faults %s (choose from %s)" % (sorted(unknown), ", ".join(FAULT_KINDS)))
    report = Chaos(options(args)).run()
    print("\n".join(report.lines()), flush=True)
    if args.record:
        record(report, args)
    return 1 if report.figures.violations() else 0


if __name__ == "__main__":
    sys.exit(main())

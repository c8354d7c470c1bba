"""Soak benchmark: no-op runs at max_procs 4 through a private ActiveMQ; prints the figures.

    python3 bench/soak.py [--runs 2000] [--warmup 20] [--json FILE]

Figures: runs lost (target 0), duplicate COMPLETEs (target 0), the daemon's RSS after the
warm-up and at the end (growth under 10 MB), its open file descriptors then and at the
end (no growth), and runs/s.  Exits 1 when a target is missed.  ``make soak`` runs it;
``tests/test_fire_soak.py`` runs the same soak at a smaller size (``SOAK_RUNS``).
"""

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_agent import Bench  # noqa: E402

from postprocessing.devtools.activemq import LocalActiveMQ  # noqa: E402
from tests.support.soak import SoakFigures, soak  # noqa: E402

MAX_RSS_GROWTH_MB = 10.0


def report(f: SoakFigures) -> bool:
    """Print the figures beside their targets; True when every target is met."""
    rows = [
        ("runs", "%d (after %d warm-up runs), max_procs 4" % (f.runs, f.warmup), "", True),
        ("runs lost", "%d" % f.lost, "0", f.lost == 0),
        ("duplicate COMPLETEs", "%d" % f.duplicate_complete, "0", f.duplicate_complete == 0),
        ("duplicate STARTEDs", "%d" % f.duplicate_started, "", True),
        ("error outcomes", "%d" % f.errors, "0", f.errors == 0),
        ("daemon RSS start -> end", "%.1f -> %.1f MB (%+.1f MB)" % (f.rss_start_mb, f.rss_end_mb, f.rss_growth_mb),
         "growth < %.0f MB" % MAX_RSS_GROWTH_MB, f.rss_growth_mb < MAX_RSS_GROWTH_MB),
        ("open fds start -> end", "%d -> %d" % (f.fds_start, f.fds_end), "no growth", f.fds_end <= f.fds_start),
        ("throughput", "%.1f runs/s (%.1f s)" % (f.runs_per_s, f.seconds), "", True),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, target, ok in rows:
        print("%-*s  %-45s %s%s" % (width, name, value, target, "" if ok else "   MISSED"))
    return all(r[3] for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000, help="no-op runs to send after the warm-up")
    parser.add_argument("--warmup", type=int, default=20, help="runs before the first measurement")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="pp-soak-")
    broker = LocalActiveMQ(os.path.join(workdir, "broker")).start()
    bench = Bench(workdir, broker)
    try:
        agent = bench.agent("soak", max_procs=4)
        figures = soak(bench.client, agent, bench.facility, args.runs, args.warmup)
        agent.stop()
    finally:
        bench.close()
    ok = report(figures)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(dict(dataclasses.asdict(figures), rss_growth_mb=figures.rss_growth_mb,
                           runs_per_s=figures.runs_per_s), handle, indent=1)
    if ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print("targets missed; the broker, agent log and runs are kept in %s" % workdir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

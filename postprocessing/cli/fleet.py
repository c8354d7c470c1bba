"""``postprocessing fleet``: every agent's status, from the fleet status topic."""

import argparse
import sys
from typing import Any

from postprocessing.config import Config
from postprocessing.errors import UsageError
from postprocessing.fleet import view


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "fleet", help="show every agent: state, slots, running runs, last outcomes",
        description="Ask every agent for its status (config keys fleet_status, fleet_control) and show "
                    "host, pid, state (running, draining, stopping, stopped, missing), slots, paused "
                    "instruments, running runs and the last outcome of each.  A node silent for more than "
                    "%d of its heartbeat intervals is shown as missing." % view.MISSING_AFTER,
        epilog="exit status: 0 at least --expect nodes are live; 1 fewer are, or the broker cannot be "
               "reached; 2 bad arguments or configuration.")
    p.add_argument("--watch", action="store_true",
                   help="refresh until Ctrl-C (in place on a terminal)")
    p.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                   help="how long to collect statuses, and with --watch how often to refresh (default 2)")
    p.add_argument("--expect", type=int, default=1, metavar="N",
                   help="fail unless at least N nodes are live (default 1; 0 never fails)")
    p.add_argument("--json", action="store_true", help="print JSON (with --watch: a line per refresh)")
    p.set_defaults(handler=command)


def command(args: argparse.Namespace, cfg: Config, notes: "list[str]") -> int:
    if args.interval <= 0:
        raise UsageError("--interval must be greater than 0")
    if args.expect < 0:
        raise UsageError("--expect must not be negative")
    if args.watch:
        def write(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        live = view.watch(cfg, args.interval, args.expect, write, sys.stdout.isatty(), args.json)
        return 0 if live >= args.expect else 1
    entries = view.snapshot(cfg, args.interval)
    print(view.as_json(entries, args.expect) if args.json else view.render(entries, args.expect))
    return 0 if sum(1 for e in entries if e["live"]) >= args.expect else 1

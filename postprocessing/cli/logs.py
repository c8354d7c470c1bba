"""``postprocessing logs``: where a run's reduction log and error file are, and what they say."""

import argparse
import sys
from typing import Any, Dict

from postprocessing.config import Config
from postprocessing.errors import UsageError
from postprocessing.fleet import logs


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "logs", help="print a run's reduction log and error file",
        description="Find a run's reduction log and error file through the facility layout (no SSH to the "
                    "node that ran it), print where they are, then print them.",
        epilog="exit status: 0 the files were printed; 1 the run or its logs were not found, or (--follow) "
               "the broker cannot be reached; 2 bad arguments or configuration.")
    p.add_argument("--instrument", required=True, metavar="I", help="the instrument, such as CNCS")
    p.add_argument("--run", required=True, metavar="N", help="the run number")
    p.add_argument("--ipts", metavar="P", help="the proposal (default: the one holding the run's data file)")
    p.add_argument("--facility", metavar="F", help="the facility (default: config key facility)")
    p.add_argument("--follow", action="store_true",
                   help="keep printing what is added while an agent runs the run (from its fleet status)")
    p.set_defaults(handler=command)


def command(args: argparse.Namespace, cfg: Config, notes: "list[str]") -> int:
    if not args.run.isdigit():
        raise UsageError("--run must be a run number")
    instrument = args.instrument.upper()
    run = str(int(args.run))
    ipts, log_path, err_path = logs.log_paths(cfg, instrument, run, args.ipts, args.facility)
    print("reduction log: %s" % log_path)
    print("error file:    %s" % err_path)
    offsets: Dict[str, int] = {}
    found = False
    for label, path in (("reduction log", log_path), ("error file", err_path)):
        text, offsets[path] = logs.read_text(path)
        if text is None:
            print("--- %s: not there (yet) ---" % label)
            continue
        found = True
        print("--- %s ---" % label)
        sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")
    sys.stdout.flush()
    if args.follow:
        print("--- following while %s %s runs ---" % (instrument, run), flush=True)

        def write(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        logs.follow_run(cfg, instrument, run, [log_path, err_path], write, offsets)
        print("--- %s %s is not running ---" % (instrument, run))
        return 0
    return 0 if found else 1

"""``postprocessing drain|resume|pause|unpause|shutdown``: fleet control over the control topic."""

import argparse
import json
from typing import Any

from postprocessing import logsafe
from postprocessing.agent.control import INSTRUMENT
from postprocessing.cli.progress import table
from postprocessing.config import Config
from postprocessing.errors import UsageError
from postprocessing.fleet import commands

_HELP = {
    "drain": "finish running runs and take nothing new (stays connected)",
    "resume": "undo drain: take runs again",
    "pause": "start no run of an instrument; its runs stay queued",
    "unpause": "let a paused instrument's runs go",
    "shutdown": "stop agents gracefully, as SIGTERM does",
}


def add_parser(sub: Any) -> None:
    for name, text in _HELP.items():
        p = sub.add_parser(
            name, help=text,
            description="%s.  Sent on the control topic (config key fleet_control); agents obey only broker "
                        "users in their control_users, and each answers what it did." % text.capitalize(),
            epilog="exit status: 0 at least --expect agents answered and none refused; 1 otherwise, or the "
                   "broker cannot be reached; 2 bad arguments or configuration.")
        target = p.add_mutually_exclusive_group()
        target.add_argument("--host", metavar="H", help="only the agents on host H (or H:PID for one agent)")
        target.add_argument("--all", action="store_true", help="every agent" if name not in (
            "pause", "unpause") else ("every paused instrument" if name == "unpause" else argparse.SUPPRESS))
        if name in ("pause", "unpause"):
            p.add_argument("--instrument", metavar="I", help="the instrument")
        p.add_argument("--wait", type=float, default=3.0, metavar="SECONDS",
                       help="how long to collect the answers (default 3)")
        p.add_argument("--expect", type=int, default=1, metavar="N",
                       help="fail unless at least N agents answer (default 1)")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.set_defaults(handler=command, control=name)


def command(args: argparse.Namespace, cfg: Config, notes: "list[str]") -> int:
    name = args.control
    instrument = getattr(args, "instrument", None)
    if args.wait <= 0:
        raise UsageError("--wait must be greater than 0")
    if name in ("drain", "resume", "shutdown") and not args.host and not args.all:
        raise UsageError("name the agents: --host H or --all")
    if name == "pause" and not instrument:
        raise UsageError("name the instrument: --instrument I")
    if name == "unpause" and not instrument and not args.all:
        raise UsageError("name the instrument: --instrument I, or --all")
    if instrument and not INSTRUMENT.fullmatch(instrument):
        raise UsageError("--instrument must be a plain name such as CNCS")
    answers = commands.send_command(cfg, name, args.host, instrument, args.all, args.wait)
    refused = [a for a in answers if a.get("result") != "done"]
    ok = len(answers) >= args.expect and not refused
    if args.json:
        print(json.dumps({"command": name, "answers": answers, "count": len(answers), "ok": ok}, indent=1))
    else:
        if answers:
            print(table(("HOST", "PID", "RESULT", "WHAT IT DID"), [
                (logsafe.text(a.get("host")), logsafe.text(a.get("pid")), logsafe.text(a.get("result")),
                 logsafe.text(a.get("detail"))) for a in answers]))
        print("%d agent%s answered within %g s%s" % (
            len(answers), "" if len(answers) == 1 else "s", args.wait,
            "" if len(answers) >= args.expect else " (expected at least %d)" % args.expect))
    return 0 if ok else 1

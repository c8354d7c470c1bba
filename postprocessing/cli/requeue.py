"""``postprocessing requeue``: resubmit runs by hand, given explicitly or found in the workflow database."""

import argparse
import datetime
import getpass
import logging
import re
import sys
from typing import Any, Dict, List, Optional, Sequence

from postprocessing import messages
from postprocessing.cli.broker import BrokerSession
from postprocessing.cli.progress import ProgressBar, confirm
from postprocessing.config import Config, queue_destination
from postprocessing.errors import TransportError, UsageError
from postprocessing.ops import workflowdb
from postprocessing.ops.runs import Candidate, data_file_runs, explicit_runs, unique

logger = logging.getLogger(__name__)

DEFAULT_QUEUE = "REDUCTION.DATA_READY"
KNOWN_QUEUES = ("REDUCTION.DATA_READY", "CATALOG.ONCAT.DATA_READY", "REDUCTION_CATALOG.DATA_READY",
                "POSTPROCESS.DATA_READY")
CONFIRM_ABOVE = 50
MAX_RUNS = 100000
_QUEUE_NAME = re.compile(r"(/queue/)?[A-Za-z0-9][A-Za-z0-9._-]{0,199}")

EXAMPLES = """examples:
  postprocessing requeue --instrument CNCS --ipts IPTS-1234 --runs 100-120,130
  postprocessing requeue --data-file /SNS/CNCS/IPTS-1234/nexus/CNCS_100.nxs.h5
  postprocessing requeue --from-db "host=db dbname=workflow" --instrument CNCS --since 2024-05-01 --dry-run

exit status: 0 every run was sent (or would be, with --dry-run); 1 some runs were not sent
(missing data file, no confirmation, broker or database failure); 2 bad arguments or configuration.
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "requeue", help="resubmit runs to a workflow queue",
        description="Send run messages again, for runs given on the command line or found in the "
                    "workflow manager's database. Data files are looked up under data_root: "
                    "/<FAC>/<INST>/<IPTS>/nexus/<INST>_<run>.nxs.h5, then "
                    "/<FAC>/<INST>/<IPTS>/0/<run>/NeXus/<INST>_<run>_event.nxs.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("which runs")
    what.add_argument("--instrument", help="instrument name (a filter with --from-db)")
    what.add_argument("--ipts", help="proposal, for example IPTS-1234 (a filter with --from-db)")
    what.add_argument("--runs", metavar="LIST", help="run numbers and ranges, for example 100-120,130")
    what.add_argument("--data-file", metavar="PATH", action="append", default=[],
                      help="a data file under data_root (repeatable)")
    what.add_argument("--facility", help="facility of the runs (default: the configured facility)")
    db = p.add_argument_group("from the workflow database")
    db.add_argument("--from-db", metavar="DSN", help="PostgreSQL connection string of the workflow database")
    db.add_argument("--since", metavar="DATE", help="runs created at or after DATE (YYYY-MM-DD[ HH:MM])")
    db.add_argument("--until", metavar="DATE", help="runs created before DATE")
    db.add_argument("--status", choices=("error", "incomplete", "any"),
                    help="error: the latest status of the queue's step is an *.ERROR queue, SNS's CATALOG.ERROR "
                         "counting for REDUCTION_CATALOG (default); "
                         "incomplete: the workflow summary says not complete; any: no filter")
    how = p.add_argument_group("sending")
    how.add_argument("--queue", default=DEFAULT_QUEUE,
                     help="destination queue (default %s; also %s)" % (DEFAULT_QUEUE, ", ".join(KNOWN_QUEUES[1:])))
    how.add_argument("--user", default=None, help="who asks, for the information field (default: login name)")
    how.add_argument("--dry-run", action="store_true", help="list what would be sent and send nothing")
    how.add_argument("-y", "--yes", action="store_true",
                     help="do not ask for confirmation when more than %d runs would be sent" % CONFIRM_ABOVE)
    p.set_defaults(handler=command)


# -- argument parsing -------------------------------------------------------------------
def parse_runs(text: str) -> List[str]:
    """'100-120,130' -> run numbers as strings, in order, without duplicates."""
    out: Dict[str, None] = {}
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"([0-9]{1,18})(?:\s*-\s*([0-9]{1,18}))?", part)
        if not match:
            raise UsageError("--runs: %r is not a run number or a range such as 100-120" % part)
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        if last < first:
            raise UsageError("--runs: range %s goes backwards" % part)
        if len(out) + last - first + 1 > MAX_RUNS:
            raise UsageError("--runs: more than %d runs" % MAX_RUNS)
        for number in range(first, last + 1):
            out[str(number)] = None
    return list(out)


def parse_time(option: str, text: Optional[str]) -> Optional[datetime.datetime]:
    if text is None:
        return None
    try:
        return datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError("%s: %r is not a date such as 2024-05-01 or 2024-05-01 13:30" % (option, text)) from None


def plain(value: str, label: str) -> str:
    return workflowdb.plain(value, label)


def queue_name(text: str) -> str:
    if not _QUEUE_NAME.fullmatch(text):
        raise UsageError("--queue: %r is not a queue name" % text)
    return text[len("/queue/"):] if text.startswith("/queue/") else text


def check_combination(args: argparse.Namespace) -> None:
    explicit = bool(args.runs or args.data_file)
    if args.from_db and explicit:
        raise UsageError("--from-db cannot be combined with --runs or --data-file")
    if not args.from_db and not explicit:
        raise UsageError("say which runs: --runs with --instrument and --ipts, --data-file, or --from-db")
    if not args.from_db:
        for option in ("since", "until", "status"):
            if getattr(args, option) is not None:
                raise UsageError("--%s only applies with --from-db" % option)
    if args.runs and not (args.instrument and args.ipts):
        raise UsageError("--runs needs --instrument and --ipts")
    if args.data_file and not args.runs and (args.instrument or args.ipts):
        raise UsageError("--instrument and --ipts go with --runs; a --data-file path names its own")


# -- the command ------------------------------------------------------------------------
def command(args: argparse.Namespace, cfg: Config, notes: "list[str]") -> int:
    check_combination(args)
    queue = queue_name(args.queue)
    destination = queue_destination(queue)
    facility = plain(args.facility or cfg.facility, "Facility")
    if args.from_db:
        runs = workflowdb.RunFilter(args.status or "error", args.instrument, args.ipts,
                                    parse_time("--since", args.since), parse_time("--until", args.until))
        candidates = workflowdb.database_runs(cfg, args.from_db, runs, facility, queue)
    else:
        candidates = []
        if args.runs:
            candidates += explicit_runs(cfg, facility, plain(args.instrument, "Instrument"),
                                        plain(args.ipts, "IPTS"), parse_runs(args.runs))
        candidates += data_file_runs(cfg, args.data_file)
    candidates = unique(candidates)
    ready = [c for c in candidates if c.data_file]
    missing = [c for c in candidates if not c.data_file]
    for c in missing:
        print("missing data file, not sent: %s; looked for %s" % (c.label, ", ".join(c.looked_at) or "-"),
              file=sys.stderr)
    if not candidates:
        print("requeue: no runs matched; nothing to send")
        return 0
    if args.dry_run:
        for c in ready:
            print("would send %s %s%s -> %s" % (c.label, c.data_file, "  [%s]" % c.note if c.note else "",
                                                destination))
        print("requeue (dry run): %d of %d runs would be sent to %s, %d missing data files" % (
            len(ready), len(candidates), destination, len(missing)))
        return 1 if missing else 0
    if len(ready) > CONFIRM_ABOVE and not args.yes:
        if not confirm("Send %d runs to %s?" % (len(ready), destination)):
            print("requeue: not confirmed; nothing sent (use --yes to skip the question)", file=sys.stderr)
            return 1
    sent = send(cfg, ready, destination, args.user or getpass.getuser())
    failed = len(ready) - sent
    print("requeue: sent %d of %d runs to %s, %d missing data files%s" % (
        sent, len(candidates), destination, len(missing), ", %d not confirmed" % failed if failed else ""))
    return 0 if sent == len(candidates) else 1


def send(cfg: Config, runs: Sequence[Candidate], destination: str, user: str) -> int:
    """Send the runs persistently, with receipts; returns how many the broker confirmed."""
    if not runs:
        return 0
    information = "Requested by %s via requeue" % user
    outgoing = [(destination, messages.encode(c.body(information)), {"persistent": "true"}) for c in runs]
    bar = ProgressBar(len(outgoing), "requeue")
    confirmed = 0

    def done(index: int) -> None:
        nonlocal confirmed
        confirmed += 1
        bar.advance()
        logger.info("sent %s to %s", runs[index].label, destination)

    try:
        with BrokerSession(cfg) as session:
            session.send(outgoing, on_confirm=done)
    except TransportError as err:
        bar.close()
        print("requeue: %s" % err, file=sys.stderr)
        return confirmed
    bar.close()
    return confirmed

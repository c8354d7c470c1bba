"""``postprocessing requeue``: resubmit runs by hand, given explicitly or found in the workflow database."""

import argparse
import dataclasses
import datetime
import getpass
import logging
import os
import re
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from postprocessing import layout, messages
from postprocessing.cli.broker import BrokerSession
from postprocessing.cli.progress import ProgressBar, confirm
from postprocessing.config import Config, queue_destination
from postprocessing.errors import InvalidMessage, PostProcessingError, TransportError, UsageError

logger = logging.getLogger(__name__)

DEFAULT_QUEUE = "REDUCTION.DATA_READY"
KNOWN_QUEUES = ("REDUCTION.DATA_READY", "CATALOG.ONCAT.DATA_READY", "REDUCTION_CATALOG.DATA_READY",
                "POSTPROCESS.DATA_READY")
#: Statuses of a workflow step whose queue names do not start with the step: the SNS
#: agent answers a failed reduced catalogue on CATALOG.ERROR.
STEP_ALSO = {"REDUCTION_CATALOG": ("CATALOG.ERROR",)}
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


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A run to resubmit; ``data_file`` is None when no data file was found."""

    facility: str
    instrument: str
    ipts: str
    run_number: str
    data_file: Optional[str]
    looked_at: Tuple[str, ...] = ()
    note: str = ""

    @property
    def label(self) -> str:
        return "%s %s (%s)" % (self.instrument, self.run_number, self.ipts)

    def body(self, information: str) -> Dict[str, Any]:
        return {"facility": self.facility, "instrument": self.instrument, "ipts": self.ipts,
                "run_number": self.run_number, "data_file": self.data_file, "information": information}


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
    try:
        return messages.plain_name({"value": value}, "value", label)
    except InvalidMessage as err:
        raise UsageError(str(err)) from None


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


# -- finding runs ---------------------------------------------------------------------
def explicit_runs(cfg: Config, facility: str, instrument: str, ipts: str, runs: Sequence[str]) -> List[Candidate]:
    out = []
    for run in runs:
        tried = layout.run_data_files(cfg, facility, instrument, ipts, run)
        found = layout.find_run_data_file(cfg, facility, instrument, ipts, run)
        out.append(Candidate(facility, instrument, ipts, run, found, tuple(tried)))
    return out


def data_file_runs(cfg: Config, paths: Sequence[str]) -> List[Candidate]:
    out = []
    for path in paths:
        full = os.path.abspath(path)
        parsed = layout.parse_run_data_file(cfg, full)
        if parsed is None:
            raise UsageError(
                "--data-file %s: not a run file under data_root %s (expected <FAC>/<INST>/<IPTS>/nexus/"
                "<INST>_<run>.nxs.h5 or <FAC>/<INST>/<IPTS>/0/<run>/NeXus/<INST>_<run>_event.nxs)"
                % (path, cfg.data_root))
        facility, instrument, ipts, run = parsed
        out.append(Candidate(facility, instrument, ipts, run, full if os.path.isfile(full) else None, (full,)))
    return out


def step_of(queue: str) -> str:
    """The workflow step a DATA_READY queue starts: REDUCTION_CATALOG.DATA_READY -> REDUCTION_CATALOG."""
    if not queue.endswith(".DATA_READY"):
        raise UsageError("--status error needs a *.DATA_READY queue to know the workflow step, not %s" % queue)
    return queue[:-len(".DATA_READY")]


def db_query(args: argparse.Namespace, queue: str) -> Tuple[str, Dict[str, Any]]:
    """The SQL that selects the runs, and its parameters."""
    status = args.status or "error"
    params: Dict[str, Any] = {}
    joins = ""
    where = []
    columns = "''"
    if status == "error":
        step = step_of(queue)
        prefix = step + "."
        params["prefix"] = prefix
        params["prefix_len"] = len(prefix)
        params["also"] = list(STEP_ALSO.get(step, ())) or [""]
        joins = """
        JOIN (SELECT DISTINCT ON (s.run_id_id) s.run_id_id, s.id, q.name
              FROM report_runstatus s JOIN report_statusqueue q ON q.id = s.queue_id_id
              WHERE substr(q.name, 1, %(prefix_len)s) = %(prefix)s OR q.name = ANY(%(also)s)
              ORDER BY s.run_id_id, s.created_on DESC, s.id DESC) latest ON latest.run_id_id = r.id"""
        where.append("right(latest.name, 6) = '.ERROR'")
        columns = """COALESCE((SELECT e.description FROM report_error e
                               WHERE e.run_status_id_id = latest.id ORDER BY e.id DESC LIMIT 1), latest.name)"""
    elif status == "incomplete":
        joins = " JOIN report_workflowsummary w ON w.run_id_id = r.id"
        where.append("w.complete = false")
    if args.instrument:
        params["instrument"] = args.instrument
        where.append("upper(i.name) = upper(%(instrument)s)")
    if args.ipts:
        params["ipts"] = args.ipts
        where.append("upper(p.expt_name) = upper(%(ipts)s)")
    since = parse_time("--since", args.since)
    until = parse_time("--until", args.until)
    if since is not None:
        params["since"] = since
        where.append("r.created_on >= %(since)s")
    if until is not None:
        params["until"] = until
        where.append("r.created_on < %(until)s")
    sql = """SELECT i.name, p.expt_name, r.run_number, r.file, %s
             FROM report_datarun r
             JOIN report_instrument i ON i.id = r.instrument_id_id
             JOIN report_ipts p ON p.id = r.ipts_id_id%s
             %s
             ORDER BY i.name, r.run_number, r.id""" % (
        columns, joins, ("WHERE " + " AND ".join(where)) if where else "")
    return sql, params


def database_runs(cfg: Config, args: argparse.Namespace, facility: str, queue: str) -> List[Candidate]:
    try:
        import psycopg2
    except ImportError:
        raise UsageError("--from-db needs psycopg2, a dependency of postprocessing that is missing here: "
                         "reinstall the package (pip install postprocessing, or the RPM)") from None
    sql, params = db_query(args, queue)
    try:
        conn = psycopg2.connect(args.from_db)
    except psycopg2.Error as err:
        raise PostProcessingError("cannot connect to the workflow database: %s" % _first_line(err)) from None
    try:
        conn.set_session(readonly=True)
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
    except psycopg2.Error as err:
        raise PostProcessingError("workflow database query failed: %s" % _first_line(err)) from None
    finally:
        conn.close()
    out = []
    for name, expt, run_number, path, note in rows:
        try:
            instrument = plain(str(name), "Instrument")
            ipts = plain(str(expt), "IPTS")
        except UsageError as err:
            logger.warning("skipping run %s from the database: %s", run_number, err)
            continue
        run = str(int(run_number))
        tried = [path] if path else []
        found = path if path and os.path.isfile(path) else None
        if found is None:
            tried += layout.run_data_files(cfg, facility, instrument, ipts, run)
            found = layout.find_run_data_file(cfg, facility, instrument, ipts, run)
        out.append(Candidate(facility, instrument, ipts, run, found, tuple(tried), str(note or "")))
    return out


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def unique(candidates: Iterable[Candidate]) -> List[Candidate]:
    seen: Dict[Tuple[str, str, str], Candidate] = {}
    for c in candidates:
        seen.setdefault((c.facility, c.instrument, c.run_number), c)
    return list(seen.values())


# -- the command ------------------------------------------------------------------------
def command(args: argparse.Namespace, cfg: Config, notes: "list[str]") -> int:
    check_combination(args)
    queue = queue_name(args.queue)
    destination = queue_destination(queue)
    facility = plain(args.facility or cfg.facility, "Facility")
    if args.from_db:
        candidates = database_runs(cfg, args, facility, queue)
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

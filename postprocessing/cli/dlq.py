"""``postprocessing dlq list|show|reinject|purge``: look at and clean up the dead letter queue.

The dead-letter model is :mod:`postprocessing.ops.deadletters`; this module parses the
arguments and prints.

Messages are read with client acknowledgement and left un-acked unless reinjected or
purged, so the broker keeps everything else: closing the connection hands them back.
"""

import argparse
import datetime
import json
import sys
from typing import Any, List, Sequence, Tuple

from postprocessing.cli.broker import BrokerSession
from postprocessing.cli.progress import confirm, table
from postprocessing.cli.requeue import parse_runs
from postprocessing.config import Config, queue_destination
from postprocessing.errors import PostProcessingError, TransportError, UsageError
from postprocessing.ops.deadletters import DeadLetter, Selection, dead_letter_queue, read, reinjection, save, summarise


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "dlq", help="list, show, reinject or purge dead letters",
        description="Work on the dead letter queue (config key dead_letter_queue; by default the broker's "
                    "own: ActiveMQ.DLQ on ActiveMQ Classic, DLQ on Artemis). "
                    "Messages not reinjected or purged stay in the queue.",
        epilog="exit status: 0 done; 1 nothing matched the selection, or a broker failure; "
               "2 bad arguments or configuration.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    def action(name: str, help_text: str, select: bool) -> argparse.ArgumentParser:
        a = actions.add_parser(name, help=help_text, description=help_text)
        a.add_argument("--dlq", metavar="QUEUE", help="the dead letter queue (default: from the config)")
        a.add_argument("--limit", type=int, default=10000, metavar="N",
                       help="read at most N messages (default 10000)")
        a.add_argument("--wait", type=float, default=1.0, metavar="SECONDS",
                       help="stop reading when no message came for this long (default 1)")
        if select:
            a.add_argument("--id", action="append", default=[], metavar="MESSAGE_ID",
                           help="select this message (repeatable)")
            a.add_argument("--destination", metavar="QUEUE", help="select by original destination")
            a.add_argument("--instrument", help="select run messages of this instrument")
            a.add_argument("--runs", metavar="LIST", help="select run numbers, for example 100-120,130")
            a.add_argument("--all", action="store_true", help="select every message read")
        a.set_defaults(handler=command, action=name)
        return a

    listing = action("list", "summarise the dead letters by original destination, instrument and run",
                     select=False)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show = action("show", "print selected dead letters in full (all of them without a selection)", select=True)
    show.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    reinject = action("reinject", "send selected dead letters back to their original queue", select=True)
    reinject.add_argument("--to", metavar="QUEUE", help="send to this queue instead of the original destination")
    reinject.add_argument("--dry-run", action="store_true", help="list what would be reinjected")
    purge = action("purge", "remove selected dead letters, writing them to a file first", select=True)
    purge.add_argument("--output", metavar="FILE",
                       help="where to write the removed messages as JSON lines "
                            "(default: dlq-purged-<time>.jsonl in the current directory)")
    purge.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    purge.add_argument("--dry-run", action="store_true", help="list what would be purged")


def select(letters: Sequence[DeadLetter], args: argparse.Namespace, required: bool) -> List[DeadLetter]:
    selection = Selection(frozenset(args.id), args.destination, args.instrument,
                          frozenset(parse_runs(args.runs)) if args.runs else frozenset())
    if required and not selection.given and not args.all:
        raise UsageError("select messages with --id, --destination, --instrument, --runs, or --all")
    return selection.pick(letters)


# -- actions ---------------------------------------------------------------------------
def do_list(args: argparse.Namespace, dlq: str, letters: Sequence[DeadLetter]) -> int:
    rows = summarise(letters)
    if args.json:
        print(json.dumps({"dlq": dlq, "count": len(letters), "groups": [
            {"original_destination": d, "instrument": i, "run": r, "count": n} for d, i, r, n in rows]},
            indent=1))
        return 0
    if rows:
        print(table(("ORIGINAL DESTINATION", "INSTRUMENT", "RUN", "COUNT"), rows))
    print("%d message%s in %s%s" % (len(letters), "" if len(letters) == 1 else "s", dlq,
                                     " (read limit reached)" if len(letters) >= args.limit else ""))
    return 0


def do_show(args: argparse.Namespace, letters: Sequence[DeadLetter]) -> int:
    for m in letters:
        record = m.record()
        if args.json:
            print(json.dumps(record))
            continue
        print("message-id: %s" % m.message_id)
        for key in sorted(m.headers):
            if key not in ("message-id", "ack", "subscription", "content-length"):
                print("  %s: %s" % (key, m.headers[key]))
        if m.fields:
            print(json.dumps(m.fields, indent=2, sort_keys=True))
        else:
            print(record.get("body", record.get("body_base64")))
        print()
    print("%d message%s shown" % (len(letters), "" if len(letters) == 1 else "s"))
    return 0 if letters else 1


def do_reinject(args: argparse.Namespace, session: BrokerSession, letters: Sequence[DeadLetter]) -> int:
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    plan: List[Tuple[DeadLetter, str]] = []
    for m in letters:
        target = queue_destination(args.to) if args.to else m.original_destination
        if target is None:
            print("skipped %s: no original destination (use --to)" % m.message_id, file=sys.stderr)
            continue
        plan.append((m, target))
    if args.dry_run:
        for m, target in plan:
            print("would reinject %s (%s %s) -> %s" % (m.message_id, m.instrument or "-", m.run or "-", target))
        print("dlq reinject (dry run): %d of %d selected messages" % (len(plan), len(letters)))
        return 0 if plan else 1
    outgoing = [reinjection(m, target, when) for m, target in plan]

    def confirmed(index: int) -> None:
        session.ack(plan[index][0].delivery)
        m, target = plan[index]
        print("reinjected %s (%s %s) -> %s" % (m.message_id, m.instrument or "-", m.run or "-", target))

    done = session.send(outgoing, on_confirm=confirmed)
    print("dlq reinject: %d of %d selected messages sent back" % (done, len(letters)))
    return 0 if done and done == len(letters) else 1


def do_purge(args: argparse.Namespace, session: BrokerSession, dlq: str, letters: Sequence[DeadLetter]) -> int:
    if args.dry_run:
        for m in letters:
            print("would purge %s (%s %s %s)" % (m.message_id, m.original_destination or "-",
                                                 m.instrument or "-", m.run or "-"))
        print("dlq purge (dry run): %d messages" % len(letters))
        return 0 if letters else 1
    if not letters:
        print("dlq purge: no message matched; nothing removed")
        return 1
    if not args.yes and not confirm("Remove %d messages from %s?" % (len(letters), dlq)):
        print("dlq purge: not confirmed; nothing removed", file=sys.stderr)
        return 1
    path = args.output or "dlq-purged-%s.jsonl" % datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        save(path, letters)
    except FileExistsError:
        raise UsageError("--output %s exists; give a new file" % path) from None
    except OSError as err:
        raise PostProcessingError("cannot write %s: %s; nothing removed" % (path, err.strerror)) from None
    for m in letters:
        session.ack(m.delivery)
    print("dlq purge: removed %d messages from %s; they are saved in %s" % (len(letters), dlq, path))
    return 0


def command(args: argparse.Namespace, cfg: Config, notes: "list[str]") -> int:
    if args.limit <= 0:
        raise UsageError("--limit must be greater than 0")
    if args.wait <= 0:
        raise UsageError("--wait must be greater than 0")
    try:
        with BrokerSession(cfg) as session:
            dlq = dead_letter_queue(cfg, args.dlq, session.broker_kind)
            if dlq is None:
                raise UsageError("%s has no dead letter queue of its own; give --dlq or dead_letter_queue"
                                 % session.broker_kind)
            letters = read(session, dlq, args.limit, args.wait)
            if args.action == "list":
                return do_list(args, dlq, letters)
            chosen = select(letters, args, required=args.action != "show")
            if args.action == "show":
                return do_show(args, chosen)
            if args.action == "reinject":
                return do_reinject(args, session, chosen)
            return do_purge(args, session, dlq, chosen)
    except TransportError as err:
        raise TransportError("dlq %s: %s" % (args.action, err)) from None

"""``postprocessing ping``: which agents are alive, over the ping topic."""

import argparse
import json
import socket
import time
import uuid
from typing import Any, Dict, List

from postprocessing import logsafe, messages
from postprocessing.cli.broker import BrokerSession
from postprocessing.cli.progress import table
from postprocessing.config import Config
from postprocessing.errors import UsageError


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "ping", help="list the agents that answer a ping",
        description="Send a ping on the ping topic (config key heartbeat_ping) with a private reply "
                    "destination, collect the answers for a few seconds and print host, pid, reply "
                    "latency, running jobs and version of every agent that answered.",
        epilog="exit status: 0 at least --expect agents answered; 1 fewer answered, or the broker "
               "cannot be reached; 2 bad arguments or configuration.")
    p.add_argument("--wait", type=float, default=3.0, metavar="SECONDS",
                   help="how long to collect answers (default 3)")
    p.add_argument("--expect", type=int, default=1, metavar="N",
                   help="fail unless at least N agents answer (default 1; 0 never fails)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=command)


def reply_topic(cfg: Config, ping_id: str) -> str:
    """A destination only this ping listens on, next to the ping topic.

    It is a topic with a unique name, not a /temp-queue/: an agent sends to the name in the
    ping's body, and ActiveMQ resolves /temp-queue/ names per connection.
    """
    base = cfg.heartbeat_ping
    if not base.startswith("/topic/"):
        base = "/topic/" + base.lstrip("/").split("/", 1)[-1]
    return "%s.REPLY.%s" % (base, ping_id)


def ping(cfg: Config, wait: float) -> List[Dict[str, Any]]:
    """Ping the agents; returns one entry per agent that answered, sorted by host and pid."""
    ping_id = uuid.uuid4().hex
    reply_to = reply_topic(cfg, ping_id)
    answers: Dict[Any, Dict[str, Any]] = {}
    with BrokerSession(cfg) as session:
        session.subscribe(reply_to, client_ack=False)
        body = {"reply_to": reply_to, "ping_id": ping_id, "src_name": socket.gethostname(),
                "role": "postprocessing-cli"}
        sent = time.monotonic()
        session.publish(cfg.heartbeat_ping, messages.encode(body), {"persistent": "false"})
        for reply in session.replies(sent + wait):
            if reply.get("ping_id") != ping_id:
                continue
            key = (reply.get("src_name"), reply.get("pid"))
            answers.setdefault(key, {
                "host": reply.get("src_name"),
                "pid": _int_or_none(reply.get("pid")),
                "latency_ms": round((time.monotonic() - sent) * 1000.0, 1),
                "running_jobs": reply.get("running_jobs"),
                "version": reply.get("version"),
            })
    return sorted(answers.values(), key=lambda a: (str(a["host"]), a["pid"] or 0))


def _int_or_none(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _cell(value: Any) -> str:
    """A table cell; an answer's values come from whoever answered, so control characters are escaped."""
    return "-" if value is None else logsafe.text(value)


def command(args: argparse.Namespace, cfg: Config, notes: "list[str]") -> int:
    if args.wait <= 0:
        raise UsageError("--wait must be greater than 0")
    if args.expect < 0:
        raise UsageError("--expect must not be negative")
    agents = ping(cfg, args.wait)
    ok = len(agents) >= args.expect
    if args.json:
        print(json.dumps({"agents": agents, "count": len(agents), "expected": args.expect, "ok": ok},
                         indent=1))
    else:
        if agents:
            print(table(("HOST", "PID", "LATENCY", "RUNNING", "VERSION"), [
                (_cell(a["host"]), _cell(a["pid"]), "%.0f ms" % a["latency_ms"], _cell(a["running_jobs"]),
                 _cell(a["version"])) for a in agents]))
        print("%d agent%s answered within %g s%s" % (
            len(agents), "" if len(agents) == 1 else "s", args.wait,
            "" if ok else " (expected at least %d)" % args.expect))
    return 0 if ok else 1

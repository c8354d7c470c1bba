"""The fleet as the status topic shows it: which agents are live, what each one runs.

Agents publish their status (agent/status.py) at least every heartbeat interval; one
silent for more than ``MISSING_AFTER`` of its own intervals is shown as missing.  A
one-off look asks every agent for a status at once (a ``status`` command on the control
topic), so it need not wait a whole interval.
"""

import json
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from postprocessing import logsafe, messages
from postprocessing.cli.broker import BrokerSession
from postprocessing.cli.progress import table
from postprocessing.config import Config
from postprocessing.errors import InvalidMessage

#: Heartbeat intervals of silence after which a node is shown as missing.
MISSING_AFTER = 3
STATUS_KIND = "postprocessing-status"
#: ANSI: cursor home, clear the screen.
CLEAR = "\x1b[H\x1b[2J"


class Fleet:
    """The latest status of every agent heard from, by (host, pid)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.nodes: Dict[Tuple[str, int], Dict[str, Any]] = {}
        self._seen: Dict[Tuple[str, int], float] = {}

    def add(self, status: Dict[str, Any]) -> bool:
        """Take a status message body; False if it is not one."""
        if status.get("kind") != STATUS_KIND:
            return False
        host, pid = status.get("host"), status.get("pid")
        if not isinstance(host, str) or not isinstance(pid, int) or isinstance(pid, bool):
            return False
        self.nodes[(host, pid)] = status
        self._seen[(host, pid)] = self._clock()
        return True

    def entries(self) -> List[Dict[str, Any]]:
        """Every node heard from, sorted by host and pid, with ``live`` and ``silent_sec``."""
        now = self._clock()
        out = []
        for key in sorted(self.nodes):
            status = dict(self.nodes[key])
            silent = now - self._seen[key]
            interval = status.get("heartbeat_interval_sec")
            if not isinstance(interval, (int, float)) or interval <= 0:
                interval = 30.0
            state = status.get("state")
            if state != "stopped" and silent > MISSING_AFTER * interval:
                state = "missing"
            status["state"] = state
            status["live"] = state not in ("missing", "stopped")
            status["silent_sec"] = round(silent, 1)
            out.append(status)
        return out

    def live(self) -> int:
        return sum(1 for e in self.entries() if e["live"])


def _cell(value: Any) -> str:
    """A table cell: whoever published the status chose its values, so they are escaped."""
    return "-" if value is None or value == "" else logsafe.text(value)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return "%ds" % seconds
    if seconds < 3600:
        return "%dm%02ds" % (seconds // 60, seconds % 60)
    if seconds < 86400:
        return "%dh%02dm" % (seconds // 3600, seconds % 3600 // 60)
    return "%dd%02dh" % (seconds // 86400, seconds % 86400 // 3600)


def _size(count: Any) -> str:
    if not isinstance(count, int) or isinstance(count, bool):
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return ("%d %s" % (count, unit)) if unit == "B" else ("%.0f %s" % (count, unit))
        count /= 1024.0  # type: ignore[assignment]
    return "-"


def _run_line(run: Dict[str, Any]) -> str:
    return "%s %s %s %s %s %s" % (_cell(run.get("instrument")), _cell(run.get("run_number")),
                                  _cell(run.get("ipts")), _cell(run.get("processor")),
                                  _duration(run.get("elapsed_sec")), _size(run.get("rss_bytes")))


def _last_outcome(status: Dict[str, Any]) -> str:
    outcomes = status.get("outcomes")
    if not isinstance(outcomes, list) or not outcomes or not isinstance(outcomes[-1], dict):
        return "-"
    last = outcomes[-1]
    text = "%s %s %s %s" % (_cell(last.get("destination")), _cell(last.get("instrument")),
                            _cell(last.get("run_number")), _duration(last.get("duration_sec")))
    if last.get("error"):
        text += ": " + _cell(last.get("error"))[:60]
    return text


def render(entries: Sequence[Dict[str, Any]], expect: int) -> str:
    """The fleet as a table: a row per node, an indented row per running run, and a summary line."""
    rows: List[Sequence[str]] = []
    for e in entries:
        slots: Dict[str, Any] = e["slots"] if isinstance(e.get("slots"), dict) else {}
        paused: Dict[str, Any] = e["paused_instruments"] if isinstance(e.get("paused_instruments"), dict) else {}
        held = e.get("held_paused")
        rows.append((_cell(e.get("host")), _cell(e.get("pid")), _cell(e.get("state")),
                     "%s/%s" % (_cell(slots.get("used")), _cell(slots.get("total"))),
                     _duration(e.get("uptime_sec")), _duration(e.get("silent_sec")),
                     ",".join(_cell(p) for p in sorted(paused)) + (" (%s held)" % held if held else "")
                     if paused else "-",
                     _cell(e.get("version")), _last_outcome(e)))
        running: List[Any] = e["running"] if e.get("live") and isinstance(e.get("running"), list) else []
        for run in running:
            if isinstance(run, dict):
                rows.append(("", "", "", "", "", "", "", "", "  running: " + _run_line(run)))
    live = sum(1 for e in entries if e["live"])
    missing = sum(1 for e in entries if e["state"] == "missing")
    out = table(("HOST", "PID", "STATE", "SLOTS", "UPTIME", "SEEN", "PAUSED", "VERSION", "LAST OUTCOME"),
                rows) + "\n" if entries else ""
    summary = "%d node%s live" % (live, "" if live == 1 else "s")
    if missing:
        summary += ", %d missing" % missing
    if live < expect:
        summary += " (expected at least %d)" % expect
    return out + summary


def as_json(entries: Sequence[Dict[str, Any]], expect: int) -> str:
    live = sum(1 for e in entries if e["live"])
    return json.dumps({"nodes": list(entries), "live": live, "expected": expect, "ok": live >= expect})


class StatusListener:
    """A broker session subscribed to the status topic; it asks every agent for a status once."""

    def __init__(self, cfg: Config, session: BrokerSession) -> None:
        self.cfg = cfg
        self.session = session
        self.fleet = Fleet()
        session.subscribe(cfg.fleet_status, client_ack=False)

    def request(self) -> None:
        body = {"command": "status", "id": uuid.uuid4().hex}
        self.session.publish(self.cfg.fleet_control, messages.encode(body), {"persistent": "false"})

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            delivery = self.session.receive(left)
            if delivery is None:
                return
            try:
                self.fleet.add(messages.decode_body(delivery.body, self.cfg.max_body_bytes))
            except InvalidMessage:
                continue


def snapshot(cfg: Config, wait: float) -> List[Dict[str, Any]]:
    """Ask every agent for its status and return what came within ``wait`` seconds."""
    with BrokerSession(cfg) as session:
        listener = StatusListener(cfg, session)
        listener.request()
        listener.collect(wait)
        return listener.fleet.entries()


def watch(cfg: Config, refresh: float, expect: int, write: Callable[[str], None], in_place: bool,
          as_json_lines: bool, rounds: Optional[int] = None) -> int:
    """Show the fleet every ``refresh`` seconds until interrupted (or ``rounds`` times); the
    number of live nodes at the end."""
    live = 0
    with BrokerSession(cfg) as session:
        listener = StatusListener(cfg, session)
        listener.request()
        done = 0
        try:
            while rounds is None or done < rounds:
                listener.collect(refresh)
                entries = listener.fleet.entries()
                live = sum(1 for e in entries if e["live"])
                if as_json_lines:
                    write(as_json(entries, expect) + "\n")
                else:
                    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                    text = "fleet at %s (every %g s; Ctrl-C ends)\n%s\n" % (stamp, refresh, render(entries, expect))
                    write((CLEAR + text) if in_place else text + "\n")
                done += 1
        except KeyboardInterrupt:
            pass
    return live

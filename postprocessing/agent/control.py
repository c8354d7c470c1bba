"""Fleet control: the commands an operator sends every agent on the ``fleet_control`` topic.

A command is a JSON object::

    {"command": "drain" | "resume" | "pause" | "unpause" | "shutdown" | "status",
     "host": "node1" or "node1:4242" (optional), "instrument": "CNCS" (optional),
     "all": true (optional), "reply_to": "/topic/...", "id": "..."}

- ``drain`` (``host`` or ``all``): start nothing more, give back what waits, keep running
  jobs, stay connected; ``resume`` undoes it.
- ``pause`` (``instrument``; ``host`` narrows it to one node): no run of the instrument
  starts; its messages are held un-acked (they stay the broker's, and go back to it when
  the agent goes).  Kept in the run journal, so a restarted agent is still paused.
  ``unpause`` (``instrument`` or ``all``) lets them go.
- ``shutdown`` (``host`` or ``all``): a graceful stop, as SIGTERM gives.
- ``status``: publish a status now (no authorisation needed: it changes nothing).

Every other command is obeyed only from a broker user in ``control_users``, as the broker
vouches for it (transport/validated.py); a sender's own claim proves nothing.  Every
command addressed to this agent is logged, and answered on its ``reply_to`` (never one
of the agent's own destinations) with what the agent did.
"""

import dataclasses
import logging
import re
import time
from typing import Any, Dict, Optional

from postprocessing import logsafe, messages
from postprocessing.agent.heartbeat import REPLY_TO
from postprocessing.agent.holding import Holding
from postprocessing.agent.journal import Journal
from postprocessing.agent.ping import PingPolicy, canonical
from postprocessing.agent.runs import RunState, RunTable
from postprocessing.config import Config
from postprocessing.errors import InvalidMessage, NotConnected
from postprocessing.transport import Delivery, Transport
from postprocessing.transport.validated import validated_user

logger = logging.getLogger(__name__)

COMMANDS = ("drain", "resume", "pause", "unpause", "shutdown", "status")
#: Commands that name a node (``host`` or ``all``), and those that name an instrument.
NODE_COMMANDS = ("drain", "resume", "shutdown")
INSTRUMENT_COMMANDS = ("pause", "unpause")
INSTRUMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HOST = re.compile(r"[A-Za-z0-9._-]{1,253}(:[0-9]{1,10})?")
#: Status requests answered at most this often.
_STATUS_EVERY_SEC = 0.5


@dataclasses.dataclass(frozen=True)
class Command:
    command: str
    host: Optional[str] = None
    instrument: Optional[str] = None
    all: bool = False
    reply_to: Optional[str] = None
    id: Optional[str] = None


def parse_command(body: bytes, max_bytes: int) -> Command:
    """A control command from a message body; raises InvalidMessage naming what is wrong."""
    fields = messages.decode_body(body, max_bytes)
    command = fields.get("command")
    if command not in COMMANDS:
        raise InvalidMessage("unknown command %s" % logsafe.text(command))
    host = fields.get("host")
    if host is not None and (not isinstance(host, str) or not _HOST.fullmatch(host)):
        raise InvalidMessage("host is not a host name (or host:pid)")
    instrument = fields.get("instrument")
    if instrument is not None and (not isinstance(instrument, str) or not INSTRUMENT.fullmatch(instrument)):
        raise InvalidMessage("instrument is not a plain name")
    everyone = fields.get("all", False) is True
    reply_to = fields.get("reply_to")
    if reply_to is not None and (not isinstance(reply_to, str) or not REPLY_TO.fullmatch(reply_to)):
        raise InvalidMessage("reply_to is not a single destination")
    ident = fields.get("id")
    if ident is not None and not isinstance(ident, str):
        raise InvalidMessage("id is not a string")
    if command in NODE_COMMANDS and host is None and not everyone:
        raise InvalidMessage("%s names no agent: give host or all" % command)
    if command == "pause" and instrument is None:
        raise InvalidMessage("pause names no instrument")
    if command == "unpause" and instrument is None and not everyone:
        raise InvalidMessage("unpause names no instrument: give instrument or all")
    return Command(command, host, instrument.upper() if instrument else None, everyone, reply_to,
                   ident[:100] if ident else None)


@dataclasses.dataclass
class Effect:
    """What the loop must do after a command: stop, publish a status now, re-fit its holding."""

    stop: Optional[str] = None
    status: bool = False
    refit: bool = False


class ControlDesk:
    def __init__(self, config: Config, hostname: str, pid: int, transport: Transport, journal: Journal,
                 holding: Holding, ping_policy: PingPolicy) -> None:
        self.config = config
        self.hostname = hostname
        self.pid = pid
        self.transport = transport
        self.journal = journal
        self.holding = holding
        self.ping_policy = ping_policy
        self._last_status = 0.0
        for instrument, (since, by) in sorted(journal.paused().items()):
            holding.paused[instrument] = since
            logger.info("%s is paused (since %s, by %s): its runs are held, not started",
                        logsafe.text(instrument), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)),
                        logsafe.text(by or "?"))

    def addressed(self, cmd: Command) -> bool:
        """Whether the command names this agent (by host name, or host:pid)."""
        return cmd.host is None or cmd.host in (self.hostname, "%s:%d" % (self.hostname, self.pid))

    def on_command(self, d: Delivery, runs: RunTable) -> Effect:
        sender = validated_user(d.headers, self.transport.kind)
        try:
            cmd = parse_command(d.body, self.config.max_body_bytes)
        except InvalidMessage as err:
            logger.warning("control message from %s ignored: %s", logsafe.text(sender or "an unauthenticated sender"),
                           logsafe.text(err))
            return Effect()
        if not self.addressed(cmd):
            return Effect()
        if cmd.command == "status":
            now = time.monotonic()
            if now - self._last_status < _STATUS_EVERY_SEC:
                return Effect()
            self._last_status = now
            return Effect(status=True)
        who = sender or "an unauthenticated sender"
        if sender is None or sender not in self.config.control_users:
            why = ("the broker vouches for no sender" if sender is None
                   else "broker user %s is not in control_users" % sender)
            logger.warning("control command %s from %s refused: %s", cmd.command, logsafe.text(who),
                           logsafe.text(why))
            self._answer(cmd, "refused", "refused: %s" % why, rate_limited=True)
            return Effect()
        effect = Effect(status=True, refit=True)
        done = self._apply(cmd, sender, runs, effect)
        logger.info("control command %s%s from %s: %s", cmd.command, self._target(cmd), logsafe.text(sender),
                    logsafe.text(done))
        self._answer(cmd, "done", done)
        return effect

    @staticmethod
    def _target(cmd: Command) -> str:
        parts = []
        if cmd.instrument:
            parts.append("instrument %s" % cmd.instrument)
        if cmd.host:
            parts.append("host %s" % cmd.host)
        if cmd.all:
            parts.append("all")
        return " (%s)" % ", ".join(parts) if parts else ""

    def _apply(self, cmd: Command, sender: str, runs: RunTable, effect: Effect) -> str:
        holding = self.holding
        running = runs.count(RunState.RUNNING)
        if cmd.command == "drain":
            if holding.draining:
                return "was draining already; %d running" % running
            holding.draining = True
            return "draining: %d running go on, nothing new starts" % running
        if cmd.command == "resume":
            if not holding.draining:
                return "was not draining"
            holding.draining = False
            return "resumed: taking runs again"
        if cmd.command == "shutdown":
            effect.stop = "shutdown command from %s" % sender
            return "shutting down: %d running go on until they end" % running
        if cmd.command == "pause":
            assert cmd.instrument is not None
            if cmd.instrument in holding.paused:
                return "%s was paused already" % cmd.instrument
            self.journal.pause(cmd.instrument, sender)
            holding.paused[cmd.instrument] = time.time()
            waiting = sum(1 for r in runs.in_state(RunState.WAITING) if (r.instrument or "").upper() == cmd.instrument)
            return "paused %s: %d of its runs running go on, %d waiting are held" % (
                cmd.instrument, sum(1 for r in runs.in_state(RunState.RUNNING)
                                    if (r.instrument or "").upper() == cmd.instrument), waiting)
        # unpause
        names = [cmd.instrument] if cmd.instrument else sorted(holding.paused)
        released = 0
        unpaused = []
        for name in names:
            if name is None or name not in holding.paused:
                continue
            del holding.paused[name]
            self.journal.unpause(name)
            unpaused.append(name)
            for run in runs.in_state(RunState.PAUSED):
                if (run.instrument or "").upper() == name:
                    run.state = RunState.WAITING
                    run.waiting_since = time.monotonic()
                    released += 1
        if not unpaused:
            return "%s was not paused" % (cmd.instrument or "no instrument")
        return "unpaused %s: %d held runs may start" % (", ".join(unpaused), released)

    def _answer(self, cmd: Command, result: str, detail: str, rate_limited: bool = False) -> None:
        if cmd.reply_to is None:
            return
        refusal = (self.ping_policy.refusal(cmd.reply_to) if rate_limited
                   else self._own_destination(cmd.reply_to))
        if refusal is not None:
            logger.warning("control command %s not answered: %s", cmd.command, logsafe.text(refusal))
            return
        body: Dict[str, Any] = {"kind": "postprocessing-control-reply", "host": self.hostname, "pid": self.pid,
                                "command": cmd.command, "instrument": cmd.instrument, "id": cmd.id,
                                "result": result, "detail": detail, "draining": self.holding.draining,
                                "paused_instruments": sorted(self.holding.paused)}
        try:
            self.transport.send(cmd.reply_to, messages.encode(body), headers={"persistent": "false"})
        except NotConnected:
            logger.info("could not answer control command %s: not connected", cmd.command)

    def _own_destination(self, reply_to: str) -> Optional[str]:
        if canonical(reply_to) in self.ping_policy.own:
            return "reply_to %s is one of the agent's own destinations" % reply_to
        return None

"""Sending fleet control commands (agent/control.py) and collecting what each agent did.

The command goes to the control topic with a reply topic only this command listens on;
agents answer there.  On RabbitMQ the message carries ``user-id`` so that the broker
vouches for the sender (the agents obey only users in ``control_users``).
"""

import time
import uuid
from typing import Any, Dict, List, Optional

from postprocessing import messages
from postprocessing.cli.broker import BrokerSession
from postprocessing.config import Config

REPLY_KIND = "postprocessing-control-reply"


def reply_topic(cfg: Config, command_id: str) -> str:
    """A topic next to the control topic that only this command listens on."""
    return "%s.REPLY.%s" % (cfg.fleet_control, command_id)


def command_body(command: str, host: Optional[str], instrument: Optional[str], everyone: bool,
                 reply_to: str, command_id: str) -> Dict[str, Any]:
    body: Dict[str, Any] = {"command": command, "reply_to": reply_to, "id": command_id}
    if host:
        body["host"] = host
    if instrument:
        body["instrument"] = instrument
    if everyone:
        body["all"] = True
    return body


def send_command(cfg: Config, command: str, host: Optional[str], instrument: Optional[str], everyone: bool,
                 wait: float) -> List[Dict[str, Any]]:
    """Send a command; returns the agents' answers that came within ``wait`` seconds, by host and pid."""
    command_id = uuid.uuid4().hex
    reply_to = reply_topic(cfg, command_id)
    answers: Dict[Any, Dict[str, Any]] = {}
    with BrokerSession(cfg) as session:
        session.subscribe(reply_to, client_ack=False)
        headers = {"persistent": "false"}
        if session.broker_kind == "rabbitmq" and cfg.amq_user:
            headers["user-id"] = cfg.amq_user
        body = command_body(command, host, instrument, everyone, reply_to, command_id)
        session.publish(cfg.fleet_control, messages.encode(body), headers)
        for reply in session.replies(time.monotonic() + wait):
            if reply.get("kind") != REPLY_KIND or reply.get("id") != command_id:
                continue
            answers.setdefault((str(reply.get("host")), str(reply.get("pid"))), reply)
    return [answers[k] for k in sorted(answers)]

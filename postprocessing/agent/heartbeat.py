"""Heartbeat and ping bodies, in the SNS status format."""

import re
from typing import Any, Dict, Mapping, Optional

from postprocessing import __version__
from postprocessing.errors import InvalidMessage
from postprocessing.messages import decode_body

#: A single destination: no ActiveMQ wildcard (``*``, ``>``) or composite (``,``) that would reach many.
REPLY_TO = re.compile(r"/(queue|topic|temp-queue|temp-topic|reply-queue|amq/queue)/[^\x00\r\n:*>#,]{1,200}")


def heartbeat_body(hostname: str, pid: int) -> Dict[str, str]:
    return {"src_name": hostname, "role": "postprocessing", "status": "0", "pid": str(pid)}


def ping_reply(ping: Mapping[str, Any], hostname: str, pid: int, running: int) -> Dict[str, Any]:
    """The ping's fields back (never its ``reply_to``), plus the heartbeat fields and what this agent is doing."""
    body = {key: value for key, value in ping.items() if key != "reply_to"}
    body.update(heartbeat_body(hostname, pid))
    body["running_jobs"] = running
    body["version"] = __version__
    return body


def reply_destination(body: bytes, max_bytes: int) -> Optional[Dict[str, Any]]:
    """Parse a ping (within the message limits); returns it when it names a usable ``reply_to``."""
    try:
        ping = decode_body(body, max_bytes)
    except InvalidMessage:
        return None
    reply_to = ping.get("reply_to")
    if not isinstance(reply_to, str) or not REPLY_TO.fullmatch(reply_to):
        return None
    return ping

"""Message bodies: decoding, validation of run payloads, and outcome bodies.

Senders differ in small ways: run numbers come as strings or ints, instrument and
IPTS names sometimes lowercase, and ``facility`` may be missing.  Paths always use the
uppercase form, as the SNS agent does; outcome bodies echo the fields as received.
"""

import dataclasses
import json
import os
import re
from typing import Any, Dict, Mapping, Optional

from postprocessing.errors import InvalidMessage

RAW_ECHO_LIMIT = 1024
#: The deepest nesting of lists and objects accepted in a message body.
MAX_DEPTH = 64
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RUN_NUMBER = re.compile(r"[0-9]{1,20}")


def decode_body(body: bytes, max_bytes: int) -> Dict[str, Any]:
    """Parse a message body into a JSON object, or raise InvalidMessage."""
    if len(body) > max_bytes:
        raise InvalidMessage("Message body too large: %d bytes, limit %d" % (len(body), max_bytes))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidMessage("Message body is not UTF-8: %s" % err.reason) from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise InvalidMessage("Malformed JSON: nested too deeply") from None
    except ValueError as err:
        raise InvalidMessage("Malformed JSON: %s" % err) from None
    if not isinstance(data, dict):
        raise InvalidMessage("Message body is not a JSON object")
    if nested_deeper_than(data, MAX_DEPTH):
        raise InvalidMessage("Malformed JSON: nested too deeply (more than %d levels)" % MAX_DEPTH)
    return data


def nested_deeper_than(data: Any, limit: int) -> bool:
    """Whether lists and objects in ``data`` nest more than ``limit`` levels (no recursion).

    The parser accepts nesting almost to the recursion limit; whatever later encodes the
    fields again (outcome bodies) or describes one (error texts) runs a few frames deeper
    and would raise RecursionError on the agent's loop.  Real messages nest a few levels.
    """
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def raw_echo(body: bytes) -> str:
    """The start of an unparseable body, safe to put in an error message."""
    text = body[:RAW_ECHO_LIMIT].decode("utf-8", errors="replace").replace("\x00", "\\x00")
    if len(body) > RAW_ECHO_LIMIT:
        text += "...[%d bytes]" % len(body)
    return text


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def plain_name(data: Mapping[str, Any], key: str, label: str) -> str:
    """A field that becomes a path component: a plain name, returned uppercase."""
    value = data.get(key)
    if value is None:
        raise InvalidMessage("%s is missing" % label)
    if not isinstance(value, str) or not _PLAIN_NAME.fullmatch(value) or ".." in value:
        raise InvalidMessage("%s is not a plain name: %s" % (label, _describe(value)))
    return value.upper()


def run_number(data: Mapping[str, Any]) -> str:
    value = data.get("run_number")
    if value is None:
        raise InvalidMessage("Run number is missing")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and _RUN_NUMBER.fullmatch(value.strip()):
        return str(int(value.strip()))
    raise InvalidMessage("Run number is not a number: %s" % _describe(value))


def _encodable(path: str) -> bool:
    """Whether the OS can take ``path``: JSON may carry lone surrogates that no file name has."""
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """A validated run payload: where the data is and whose run it is."""

    fields: Mapping[str, Any]
    facility: str
    instrument: str
    ipts: str
    run_number: str
    data_file: str

    @property
    def label(self) -> str:
        """The run's identity for log lines."""
        return "%s %s" % (self.instrument, self.run_number)


def parse_run(data: Mapping[str, Any], default_facility: str) -> RunRequest:
    """Validate the SNS run payload; no filesystem access happens here."""
    facility = data.get("facility") or default_facility
    if not isinstance(facility, str) or not _PLAIN_NAME.fullmatch(facility) or ".." in facility:
        raise InvalidMessage("Facility is not a plain name: %s" % _describe(facility))
    instrument = plain_name(data, "instrument", "Instrument")
    ipts = plain_name(data, "ipts", "IPTS")
    number = run_number(data)
    data_file = data.get("data_file")
    if data_file is None:
        raise InvalidMessage("Data file is missing")
    if not isinstance(data_file, str) or not data_file or "\x00" in data_file or not _encodable(data_file):
        raise InvalidMessage("Data file is not a path: %s" % _describe(data_file))
    return RunRequest(dict(data), facility.upper(), instrument, ipts, number, data_file)


def outcome(fields: Mapping[str, Any], information: str, error: Optional[str] = None,
            **extra: Any) -> Dict[str, Any]:
    """An outcome body: the input fields back, plus ``information`` and maybe ``error``."""
    body = dict(fields)
    body["information"] = information
    if error is not None:
        body["error"] = error
    body.update(extra)
    return body


def encode(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body).encode("utf-8")

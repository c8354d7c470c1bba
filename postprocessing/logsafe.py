"""Log values that come from outside (messages, scripts, brokers) on one line each.

A value from a message may hold a newline or another control character; logged as is,
it would start a line of its own that looks like any other log line.  :func:`text`
escapes those characters, so a log line always starts with the agent's own format.
"""

import re
from typing import Any

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: "re.Match[str]") -> str:
    char = match.group(0)
    if char in _NAMED:
        return _NAMED[char]
    return "\\x%02x" % ord(char) if ord(char) < 0x100 else "\\u%04x" % ord(char)


def text(value: Any) -> str:
    """``str(value)`` with control characters escaped (``\\n``, ``\\x1b``, ``\\u2028``)."""
    return _CONTROL.sub(_escape, value if isinstance(value, str) else str(value))


def arg(value: Any) -> Any:
    """A log argument made safe: numbers stay numbers (for ``%d``), everything else is :func:`text`."""
    if isinstance(value, (int, float)):
        return value
    return text(value)

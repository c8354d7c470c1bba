"""The package's one root exception and the named subclasses used for control flow."""

from typing import Optional


class PostProcessingError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(PostProcessingError):
    """The configuration is unreadable or a key holds a bad value."""

    def __init__(self, key: Optional[str], reason: str) -> None:
        self.key = key
        self.reason = reason
        where = "configuration key '%s'" % key if key else "configuration"
        super().__init__("%s: %s" % (where, reason))


class UsageError(PostProcessingError):
    """The command line asks for something that cannot be done as given."""


class InvalidMessage(PostProcessingError):
    """A message body is malformed or a field fails validation."""


class TransportError(PostProcessingError):
    """The broker connection failed or is not available."""


class NotConnected(TransportError):
    """An operation needs a broker connection and there is none."""


class JobFailed(PostProcessingError):
    """A job ended in an error that goes back to the workflow as its outcome."""


class LimitExceeded(JobFailed):
    """A job was killed because it went over a memory or time limit."""


class Disabled(PostProcessingError):
    """Processing is switched off for this instrument (no reduce script)."""


class Skip(PostProcessingError):
    """The run needs no processing; it is not an error."""


class Retry(PostProcessingError):
    """The run should be tried again later (for example its data is not there yet)."""


class Cancelled(JobFailed):
    """The run was cancelled by request."""

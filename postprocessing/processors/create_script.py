"""The reduction script writer: ``reduce_<INST>.py`` from a template or the default script.

Everything happens in the instrument's shared autoreduce directory.  The job's outcome is
a status message ``{"src_id": "postprocessing", "status": ...}`` (with the input fields
and ``information``) on ``service_status``, where ``${instrument}`` is replaced by the
instrument.

Template values are substituted as text into Python source, once: the agent never
evaluates them, but the script it writes runs as the service account.  SNS templates take
code lines from the web form by design (``${mask}``, for example), so whoever may send
this request may run code as the service account.  The agent therefore obeys only the
broker users in ``create_script_users``, identified by the broker (transport/validated.py),
and refuses a value with a line break unless the template marks that key as multi-line
with a line ``# postprocessing: multiline key1, key2``.
"""

import dataclasses
import datetime
import os
import re
import shutil
import string
import tempfile
import threading
import time
from typing import Any, Dict, List, Mapping, Optional
from urllib.parse import unquote_plus

from postprocessing import layout, safefiles
from postprocessing.config import Config, queue_destination
from postprocessing.errors import JobFailed
from postprocessing.messages import plain_name
from postprocessing.processors.base import JobContext, Outcome, Processor, Work
from postprocessing.safefiles import UnsafePath, open_nofollow

SRC_ID = "postprocessing"
PARAMETER_LOG = "reduction_parameters.txt"
_BACKUP_STAMP = "%Y%m%dT%H%M%S.%f"
_MULTILINE = re.compile(r"^#\s*postprocessing:\s*multiline\s+(.+)$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class ScriptRequest:
    """Where the script goes: validated plain names."""

    facility: str
    instrument: str


class ScriptError(JobFailed):
    """The script cannot be written; the reason goes into the status message."""


class MissingTemplate(ScriptError):
    """The instrument has no ``reduce_<INST>.py.template``."""


def template_values(template_data: Mapping[str, Any]) -> Dict[str, str]:
    """The substitution values: strings URL-decoded (``unquote_plus``), others as ``str``."""
    return {str(key): unquote_plus(value) if isinstance(value, str) else str(value)
            for key, value in template_data.items()}


def placeholders(template: string.Template) -> List[str]:
    """The names a template uses, sorted (``Template.get_identifiers`` is Python 3.11+)."""
    names = set()
    for match in template.pattern.finditer(template.template):
        name = match.group("named") or match.group("braced")
        if name:
            names.add(name)
    return sorted(names)


def fill(text: str, values: Mapping[str, str]) -> str:
    """Fill a template with ``string.Template`` semantics; refuses if any argument is missing."""
    template = string.Template(text)
    missing = [name for name in placeholders(template) if name not in values]
    if missing:
        raise ScriptError("missing template arguments: %s" % ", ".join(missing))
    try:
        return template.substitute(values)
    except ValueError as err:
        raise ScriptError("bad template: %s" % err) from None


def multiline_keys(text: str) -> List[str]:
    """The keys a template marks as multi-line (``# postprocessing: multiline a, b``)."""
    return [key.strip() for line in _MULTILINE.findall(text) for key in line.split(",") if key.strip()]


def check_line_breaks(text: str, values: Mapping[str, str]) -> None:
    """Refuse a value with a line break for a key the template does not mark multi-line."""
    allowed = set(multiline_keys(text))
    for key in sorted(values):
        if key not in allowed and any(c in values[key] for c in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
            raise ScriptError("the value of %s has a line break, and the template does not mark %s as "
                              "multi-line" % (key, key))


def _clean(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "; ").replace("\t", " ")


def log_parameters(directory: str, values: Mapping[str, str], root: str) -> None:
    """Append the values to ``reduction_parameters.txt`` (TSV; a header on first write)."""
    keys = sorted(values)
    with open_nofollow(os.path.join(directory, PARAMETER_LOG), "a", root=root, encoding="utf-8") as handle:
        if handle.tell() == 0:
            handle.write("\t".join(["time"] + [_clean(key) for key in keys]) + "\n")
        row = [time.strftime("%Y-%m-%d %H:%M:%S")] + [_clean(values[key]) for key in keys]
        handle.write("\t".join(row) + "\n")


class ScriptWriter:
    """Installs a new ``reduce_<INST>.py`` atomically, keeping timestamped backups."""

    def __init__(self, directory: str, instrument: str, keep: int) -> None:
        self.directory = directory
        self.target = os.path.join(directory, "reduce_%s.py" % instrument)
        self.keep = keep
        self._backup_name = re.compile(
            re.escape(os.path.basename(self.target)) + r"\.[0-9]{8}T[0-9]{6}\.[0-9]{6}\.bak")

    def install(self, content: bytes, mode: int) -> None:
        """Write ``content`` to a temporary file beside the target, then rename it over."""
        if os.path.islink(self.target):
            raise ScriptError("refusing to replace a symbolic link: %s" % self.target)
        name = os.path.basename(self.target)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".%s." % name, suffix=".tmp", dir=self.directory)
        except OSError as err:
            raise ScriptError("cannot write in %s: %s" % (self.directory, err.strerror)) from None
        installed = False
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
            self._back_up(content)
            os.replace(tmp, self.target)
            installed = True
        except OSError as err:
            raise ScriptError("cannot write %s: %s" % (self.target, err.strerror)) from None
        finally:
            if not installed:
                os.unlink(tmp)

    def mode(self, source: str) -> int:
        """Permissions for the new script: the current script's, else the source file's."""
        for path in (self.target, source):
            try:
                return os.stat(path).st_mode & 0o7777
            except OSError:
                continue
        return 0o644

    def _back_up(self, new_content: bytes) -> None:
        """Copy the current script to ``reduce_<INST>.py.<time>.bak``; keep the newest few."""
        if self.keep == 0:
            return
        try:
            with open(self.target, "rb") as handle:
                if handle.read() == new_content:
                    return
        except FileNotFoundError:
            return
        stamp = datetime.datetime.now().strftime(_BACKUP_STAMP)
        shutil.copy2(self.target, "%s.%s.bak" % (self.target, stamp))
        backups = sorted(entry for entry in os.listdir(self.directory) if self._backup_name.fullmatch(entry))
        for old in backups[:-self.keep]:
            os.unlink(os.path.join(self.directory, old))


class CreateScriptProcessor(Processor):
    name = "create_script"
    queue_key = "create_reduction_script"

    def __init__(self, config: Config, hostname: str) -> None:
        super().__init__(config, hostname)
        # Requests are quick; one at a time keeps backups and the parameter log in order.
        self._lock = threading.Lock()

    def accept(self, data: Dict[str, Any]) -> Work:
        instrument = plain_name(data, "instrument", "Instrument")
        facility = plain_name(data, "facility", "Facility") if data.get("facility") else self.config.facility
        return Work(data, "%s script" % instrument, instrument, ScriptRequest(facility, instrument))

    def status(self, ctx: JobContext, text: str) -> Outcome:
        instrument = ctx.work.payload.instrument
        destination = string.Template(self.config.service_status).safe_substitute(instrument=instrument)
        return ctx.reply(queue_destination(destination), src_id=SRC_ID, status=text)

    def failed(self, ctx: JobContext, error: str) -> Outcome:
        return self.status(ctx, "Error creating %s reduction script: %s" % (ctx.work.payload.instrument, error))

    def run(self, ctx: JobContext) -> Outcome:
        request: ScriptRequest = ctx.work.payload
        facility, instrument = request.facility, request.instrument
        refusal = self.refusal(ctx.work.sender)
        if refusal is not None:
            ctx.log.error("request refused: %s", refusal)
            return self.failed(ctx, "request refused: %s" % refusal)
        try:
            with self._lock:
                text = self.create(ctx, facility, instrument)
        except MissingTemplate as err:
            ctx.log.error("%s", err)
            return self.status(ctx, "Missing %s reduction template" % instrument)
        except ScriptError as err:
            ctx.log.error("%s", err)
            return self.failed(ctx, str(err))
        ctx.log.info("%s", text)
        return self.status(ctx, text)

    def refusal(self, sender: Optional[str]) -> Optional[str]:
        """Why a request from ``sender`` (broker-validated, or None) is not obeyed, or None."""
        if sender is None:
            return ("the broker did not identify the sender (%s: see docs/security.md), and only the users "
                    "in create_script_users may ask for a script" % self.config.broker_type)
        if sender not in self.config.create_script_users:
            return "broker user %s is not in create_script_users" % sender
        return None

    def create(self, ctx: JobContext, facility: str, instrument: str) -> str:
        """Write the script; returns the status text, raises ScriptError."""
        fields = ctx.work.fields
        directory = layout.instrument_shared(self.config, facility, instrument)
        problem = safefiles.check_dir(directory, self.config.data_root)
        if problem is not None:
            raise ScriptError(problem if os.path.isdir(directory) else "no directory %s" % directory)
        writer = ScriptWriter(directory, instrument, self.config.script_backup_count)
        use_default = fields.get("use_default")
        if use_default is None:
            use_default = False
        elif use_default not in (True, False):
            raise ScriptError("use_default is not true or false: %r" % (use_default,))

        if use_default:
            default = os.path.join(directory, "reduce_%s_default.py" % instrument)
            try:
                content = _read(default, "default script")
            except FileNotFoundError:
                raise ScriptError("no default script %s" % default) from None
            writer.install(content, writer.mode(default))
            return "Installed default %s script" % instrument

        template_data = fields.get("template_data", {})
        if not isinstance(template_data, dict):
            raise ScriptError("template_data is not a JSON object")
        values = template_values(template_data)
        template = writer.target + ".template"
        try:
            text = _read(template, "template").decode("utf-8")
        except FileNotFoundError:
            raise MissingTemplate("no template %s" % template) from None
        except UnicodeDecodeError:
            raise ScriptError("template %s is not UTF-8 text" % template) from None
        check_line_breaks(text, values)
        writer.install(fill(text, values).encode("utf-8"), writer.mode(template))
        try:
            log_parameters(directory, values, self.config.data_root)
        except OSError as err:
            ctx.log.warning("cannot log the parameters in %s: %s", PARAMETER_LOG, err.strerror)
        except UnsafePath as err:
            ctx.log.error("parameters not logged: %s", err)
        return "Created %s reduction script" % instrument


def _read(path: str, what: str) -> bytes:
    """The file's bytes; raises FileNotFoundError, or ScriptError for other failures."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ScriptError("cannot read %s %s: %s" % (what, path, err.strerror)) from None

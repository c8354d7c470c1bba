"""What the two ONCat processors share: the ONCat client and the run-payload job around it.

A catalog job answers ``<kind>_started``, then ``<kind>_complete`` or ``<kind>_error`` with
``"ONCAT: <reason>"``; unusable input goes to ``postprocess_error`` without STARTED, as
for reduction.  With ``communication_only`` nothing is sent to ONCat.
"""

from typing import Any, ClassVar, Dict, List

import pyoncat
import requests

from postprocessing import layout
from postprocessing.config import Config
from postprocessing.errors import JobFailed
from postprocessing.messages import RunRequest, outcome, parse_run
from postprocessing.processors.base import JobContext, Outcome, Processor, Work


class CatalogError(JobFailed):
    """ONCat refused a request, could not be reached, or answered nonsense.

    Its text is the reason alone, as the SNS agent words it (``ONCAT: <reason>``);
    ``detail`` also names the request and the error type, for the log."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.detail = detail or reason


def field(content: Any, dotted: str) -> Any:
    """The value at a dot-separated path in a JSON object, or None if any step is missing."""
    for part in dotted.split("."):
        if not isinstance(content, dict) or part not in content:
            return None
        content = content[part]
    return content


def _reason(err: Exception) -> str:
    """A one-line reason for a failed ONCat request (never containing the API token)."""
    return " ".join(str(err).split()) or type(err).__name__


class Catalog:
    """An ONCat client for one job.

    pyoncat's resources hold their ``ONCat`` only weakly, so this object keeps it alive.
    """

    def __init__(self, config: Config) -> None:
        try:
            self.oncat = pyoncat.ONCat(config.oncat_url, api_token=config.oncat_api_token or None,
                                       timeout=config.oncat_timeout_sec)
        except ValueError as err:
            raise CatalogError("cannot use ONCat at %r: %s" % (config.oncat_url, err)) from None

    def ingest_datafile(self, path: str) -> Any:
        """Catalogue one raw data file; returns the datafile ONCat made of it (parsed JSON)."""
        return self._call("ingest of %s" % path, self.oncat.Datafile.ingest, path)

    def ingest_reduction(self, path: str) -> Any:
        """Catalogue a reduction record (the JSON file describing a reduction)."""
        return self._call("ingest of %s" % path, self.oncat.Reduction.ingest, path)

    def batch(self, paths: List[str]) -> Any:
        """Catalogue many files in one request."""
        return self._call("batch of %d files" % len(paths), self.oncat.Datafile.batch, paths)

    @staticmethod
    def _call(what: str, method: Any, argument: Any) -> Any:
        try:
            result = method(argument)
        except (pyoncat.PyONCatError, requests.RequestException) as err:
            reason = _reason(err)
            raise CatalogError(reason, "%s failed: %s: %s" % (what, type(err).__name__, reason)) from None
        return result.to_dict()


class CatalogProcessor(Processor):
    """A run-payload job that catalogues something in ONCat."""

    cancellable = True
    started_key: ClassVar[str] = ""
    complete_key: ClassVar[str] = ""
    error_key: ClassVar[str] = ""

    def accept(self, data: Dict[str, Any]) -> Work:
        request = parse_run(data, self.config.facility)
        return Work(data, request.label, request.instrument, request)

    def failed(self, ctx: JobContext, error: str) -> Outcome:
        return ctx.reply(self.config.destination(self.error_key), "ONCAT: %s" % error)

    def cancelled(self, work: Work, who: str) -> Outcome:
        return Outcome(self.config.destination(self.error_key), outcome(
            work.fields, self.hostname, "ONCAT: cancelled", cancelled_by=who))

    def run(self, ctx: JobContext) -> Outcome:
        cfg = self.config
        req: RunRequest = ctx.work.payload
        problem = layout.check_readable(cfg, req.data_file)
        if problem is not None:
            ctx.log.error("%s", problem)
            return self.invalid(req.fields, problem)
        ctx.publish(cfg.destination(self.started_key), outcome(req.fields, self.hostname))
        if cfg.communication_only:
            return ctx.reply(cfg.destination(self.complete_key))
        try:
            self.catalog(ctx, req, Catalog(cfg))
        except CatalogError as err:
            ctx.log.error("cataloguing failed: %s", err.detail)
            return self.failed(ctx, str(err))
        return ctx.reply(cfg.destination(self.complete_key))

    def catalog(self, ctx: JobContext, req: RunRequest, oncat: Catalog) -> None:
        """Send the run's files to ONCat; raises CatalogError."""
        raise NotImplementedError

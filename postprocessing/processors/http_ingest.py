"""What the Calvera and INTERSECT processors share: POST a run's fields to an ingest URL.

The raw processors send the message's fields plus ``"type": "raw"``; the reduced ones
add ``"type": "reduced"`` and ``"reduced_data_info"``, the reduction record a reduction
left beside its output (``<output_dir>/<data file with .nxs.h5 replaced by .json>``).
HTTP 200 answers ``<kind>_complete``; anything else answers ``<kind>_error`` with
``"SENDING TO <service>: <response text or exception>"``, as the SNS agent words it.
There is no STARTED message.  Unusable input goes to ``postprocess_error``, as for
reduction.  With ``communication_only`` nothing is sent and the run completes.  The job
time limit and cancel requests apply as to the ONCat jobs (``Processor.execute``).
"""

import os
from typing import Any, ClassVar, Dict

import requests

from postprocessing import layout
from postprocessing.errors import JobFailed
from postprocessing.messages import RunRequest, outcome, parse_run
from postprocessing.processors.base import JobContext, Outcome, Processor, Work
from postprocessing.processors.oncat_reduced import load_record, record_name

#: The most characters of an HTTP answer quoted in an error message.
MAX_ANSWER_CHARS = 2000


def quoted(text: str) -> str:
    """An HTTP answer or exception text, cut to MAX_ANSWER_CHARS."""
    if len(text) <= MAX_ANSWER_CHARS:
        return text
    return text[:MAX_ANSWER_CHARS] + "...[%d characters]" % len(text)


class IngestFailed(JobFailed):
    """The body could not be built (no usable reduction record)."""


class HttpIngestProcessor(Processor):
    """A run-payload job that POSTs the run to a cataloguing service's ingest URL."""

    #: The service's name as the SNS agent writes it in errors: ``SENDING TO <service>: ...``.
    service: ClassVar[str] = ""
    url_key: ClassVar[str] = ""
    complete_key: ClassVar[str] = ""
    error_key: ClassVar[str] = ""
    #: ``raw`` or ``reduced``: the ``type`` field of the POST body.
    data_type: ClassVar[str] = "raw"
    cancellable = True

    def accept(self, data: Dict[str, Any]) -> Work:
        request = parse_run(data, self.config.facility)
        return Work(data, request.label, request.instrument, request)

    def failed(self, ctx: JobContext, error: str) -> Outcome:
        return ctx.reply(self.config.destination(self.error_key), "SENDING TO %s: %s" % (self.service, error))

    def cancelled(self, work: Work, who: str) -> Outcome:
        return Outcome(self.config.destination(self.error_key), outcome(
            work.fields, self.hostname, "SENDING TO %s: cancelled" % self.service, cancelled_by=who))

    def run(self, ctx: JobContext) -> Outcome:
        cfg = self.config
        req: RunRequest = ctx.work.payload
        problem = layout.check_readable(cfg, req.data_file)
        if problem is not None:
            ctx.log.error("%s", problem)
            return self.invalid(req.fields, problem)
        if cfg.communication_only:
            return ctx.reply(cfg.destination(self.complete_key))
        try:
            body = self.body(ctx, req)
        except IngestFailed as err:
            return self.failed(ctx, str(err))
        url = getattr(cfg, self.url_key)
        try:
            response = requests.post(url, json=body, timeout=cfg.ingest_timeout_sec)
        except requests.RequestException as err:
            ctx.log.error("sending to %s at %s failed: %s", self.service, url, err)
            return self.failed(ctx, quoted(str(err)))
        if response.status_code != 200:
            ctx.log.error("%s at %s answered HTTP %d", self.service, url, response.status_code)
            return self.failed(ctx, quoted(response.text))
        ctx.log.info("sent to %s (%s data)", self.service, self.data_type)
        return ctx.reply(cfg.destination(self.complete_key))

    def body(self, ctx: JobContext, req: RunRequest) -> Dict[str, Any]:
        """What to POST: the message's fields, the type, and for reduced data the record."""
        body = dict(req.fields)
        body["type"] = self.data_type
        if self.data_type == "reduced":
            out_dir = layout.output_dir(self.config, req.facility, req.instrument, req.ipts)
            record, problem = load_record(os.path.join(out_dir, record_name(req.data_file)))
            if record is None:
                ctx.log.error("not sent to %s: %s", self.service, problem)
                raise IngestFailed("Cannot read reduced data info")
            body["reduced_data_info"] = record
        return body

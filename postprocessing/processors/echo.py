"""The SNS agent's test processor: a valid run is answered STARTED then COMPLETE, nothing runs.

Listed as ``test_processor.TestProcessor``; its input queue is ``test_data_ready``.
Unusable input goes to ``postprocess_error``, as for reduction.
"""

from typing import Any, Dict

from postprocessing import layout
from postprocessing.messages import RunRequest, outcome, parse_run
from postprocessing.processors.base import JobContext, Outcome, Processor, Work


class TestProcessor(Processor):
    __test__ = False  # not a pytest test class

    name = "test"
    queue_key = "test_data_ready"

    def accept(self, data: Dict[str, Any]) -> Work:
        request = parse_run(data, self.config.facility)
        return Work(data, request.label, request.instrument, request)

    def run(self, ctx: JobContext) -> Outcome:
        cfg = self.config
        req: RunRequest = ctx.work.payload
        problem = layout.check_readable(cfg, req.data_file)
        if problem is not None:
            return self.invalid(req.fields, problem)
        ctx.publish(cfg.destination("reduction_started"), outcome(req.fields, self.hostname))
        return ctx.reply(cfg.destination("reduction_complete"))

"""A job's own thread: it runs the processor to an outcome, whatever happens, and tells the loop."""

import logging
import queue
import threading
from typing import Any, Callable, Mapping

from postprocessing.agent.events import JobDone, Publish
from postprocessing.errors import Cancelled, PostProcessingError
from postprocessing.processors.base import JobContext, Processor

#: How long a job waits for the loop to take a message it publishes (the loop never blocks long).
_PUBLISH_WAIT = 10.0

job_logger = logging.getLogger("postprocessing.jobs.run")


def publisher(inbox: "queue.Queue[object]") -> Callable[[str, Mapping[str, Any]], None]:
    """What ``ctx.publish`` calls: hand the message to the loop and wait until it is queued."""
    def publish(destination: str, body: Mapping[str, Any]) -> None:
        sent = threading.Event()
        inbox.put(Publish(destination, body, sent))
        sent.wait(_PUBLISH_WAIT)
    return publish


def start_job(inbox: "queue.Queue[object]", key: str, processor: Processor, ctx: JobContext) -> None:
    threading.Thread(target=_job_main, args=(inbox, key, processor, ctx),
                     name="job-%s" % ctx.work.label, daemon=True).start()


def _job_main(inbox: "queue.Queue[object]", key: str, processor: Processor, ctx: JobContext) -> None:
    try:
        result = processor.execute(ctx)
    except Cancelled:
        result = processor.cancelled(ctx.work, ctx.cancelled_by or "unknown")
    except PostProcessingError as err:
        ctx.log.error("job failed: %s", err)
        result = processor.failed(ctx, str(err))
    except Exception as err:  # a processor bug must still end the run with an outcome
        ctx.log.exception("job failed unexpectedly")
        result = processor.failed(ctx, "internal error: %s: %s" % (type(err).__name__, err))
    inbox.put(JobDone(key, result))

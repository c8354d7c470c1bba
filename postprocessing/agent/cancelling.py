"""The agent's side of cancels (cancels.py has the requests and the book).

A fanned-out cancel stops the runs here that it names.  If there are none, it stands for a
queued run that arrives later, unless the journal shows that run settled here already, or
the run's claim on the shared filesystem shows that another agent answered it since the
cancel's window opened (an agent that was down or cut off when the cancel went out).  A
request that the broker took in after the cancel (both stamped: ActiveMQ Classic, Artemis)
is not the one it stands for: it runs, and the cancel stands on.
Once a cancel met its run, every agent hears it is closed (``"cancel": "closed"`` on the
fan-out topic), so that a later request for that run is not silenced.
"""

import logging
import time
from typing import List, Optional, Tuple

from postprocessing import logsafe, messages
from postprocessing.agent.cancels import CancelBook, CancelRequest, cancel_targets, closed_notice, parse_cancel, run_ref
from postprocessing.agent.journal import Journal
from postprocessing.agent.runs import Run, RunTable
from postprocessing.config import Config
from postprocessing.errors import InvalidMessage, NotConnected
from postprocessing.messages import RunRequest
from postprocessing.transport import Transport

logger = logging.getLogger(__name__)


class CancelDesk:
    def __init__(self, config: Config, hostname: str, transport: Transport, journal: Journal) -> None:
        self.config = config
        self.hostname = hostname
        self.transport = transport
        self.journal = journal
        self.book = CancelBook(config.cancel_window_sec)

    def on_arrival(self, request: RunRequest, answered_at: Optional[float] = None,
                   sent_ms: Optional[int] = None) -> Optional[CancelRequest]:
        """The standing cancel that drops a run on arrival, if any (and it is closed then).

        ``sent_ms``: when the broker took the request in, if it said; a request taken in after
        the cancel was sent after it, and runs.  ``answered_at``: when the run was last answered
        by any agent (its claim's done or settled file).  Requests of one run follow each other,
        so a run answered since the cancel's window opened took the cancel's place (its agent
        missed the cancel, being down or cut off from the broker): the cancel is closed, and
        this later request runs."""
        standing = self.book.standing(request)
        if standing is not None and not standing.sent_before(sent_ms):
            assert sent_ms is not None and standing.sent_ms is not None
            logger.info("cancel of %s %s by %s: this request was sent %.1f s after it and runs; the cancel "
                        "stands on", logsafe.text(standing.instrument), logsafe.text(standing.run_number),
                        logsafe.text(standing.who), (sent_ms - standing.sent_ms) / 1000.0)
            return None
        taken = self.book.take(request)
        if taken is None:
            return None
        cancel, since = taken
        self.announce_closed(cancel)
        if answered_at is not None and answered_at >= since - self.config.cancel_window_sec:
            logger.info("cancel of %s %s by %s: that run was answered %.0f s from the cancel; this later "
                        "request runs", logsafe.text(cancel.instrument), logsafe.text(cancel.run_number),
                        logsafe.text(cancel.who), answered_at - since)
            return None
        return cancel

    def on_fanout(self, body: bytes, runs: RunTable) -> Tuple[Optional[CancelRequest], List[Run]]:
        """A message on the fan-out topic: the cancel, and the runs here it stops."""
        try:
            fields = messages.decode_body(body, self.config.max_body_bytes)
            closed = fields.get("cancel") == "closed"
            cancel = parse_cancel(dict(fields, cancel=True) if closed else fields)
        except InvalidMessage as err:
            logger.warning("ignored a malformed cancel: %s", logsafe.text(err))
            return None, []
        if closed:
            self.book.discard(cancel)
            return cancel, []
        targets = cancel_targets(cancel, runs)
        if targets:
            self.book.discard(cancel)
            self.announce_closed(cancel)
        elif self.journal.settled_since(run_ref(cancel), time.time() - self.config.cancel_window_sec):
            logger.info("cancel of %s %s by %s: that run finished here already", logsafe.text(cancel.instrument),
                        logsafe.text(cancel.run_number), logsafe.text(cancel.who))
            self.announce_closed(cancel)
        else:
            self.book.add(cancel)
            logger.info("cancel of %s %s by %s: no such run here; it stands for %.0f s",
                        logsafe.text(cancel.instrument), logsafe.text(cancel.run_number), logsafe.text(cancel.who),
                        self.config.cancel_window_sec)
        return cancel, targets

    def announce_closed(self, cancel: CancelRequest) -> None:
        """Tell every agent that ``cancel`` met its run, so that it stands nowhere any more."""
        try:
            self.transport.send(self.config.cancel_fanout, messages.encode(closed_notice(cancel, self.hostname)),
                                headers={"persistent": "false"})
        except NotConnected:
            logger.info("could not announce that the cancel of %s %s is done: not connected",
                        logsafe.text(cancel.instrument), logsafe.text(cancel.run_number))

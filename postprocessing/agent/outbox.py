"""Outbound messages that must reach the broker: each is sent with a receipt and kept
until the broker confirms it.  After a reconnect the unconfirmed ones are sent again,
in their original order, so an outcome finished while the broker was away still goes.

A message the broker refuses (an ERROR frame naming its receipt) stays too, and is sent
again after a backoff that doubles up to ``max_backoff``, also across reconnects: Artemis
closes the connection after a refusal, and sending the message again at once on every
reconnect would make a reconnect loop, each reconnect counting as a delivery attempt of
every run the agent holds."""

import collections
import dataclasses
import itertools
import logging
import time
from typing import Callable, Mapping, Optional

from postprocessing.errors import NotConnected
from postprocessing.transport import Receipt, SendRefused, Transport

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Pending:
    destination: str
    body: bytes
    headers: Mapping[str, str]
    on_confirm: Optional[Callable[[], None]]
    #: While refused: when to send it again, and the wait after that.
    retry_at: Optional[float] = None
    backoff: float = 0.0


class Outbox:
    def __init__(self, transport: Transport, initial_backoff: float = 0.5, max_backoff: float = 300.0) -> None:
        self._transport = transport
        self._initial = initial_backoff
        self._max = max_backoff
        self._ids = itertools.count(1)
        self._pending: collections.OrderedDict[str, Pending] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def send(self, destination: str, body: bytes, on_confirm: Optional[Callable[[], None]] = None,
             headers: Optional[Mapping[str, str]] = None) -> None:
        """Send now if connected; either way the message stays until its receipt arrives."""
        receipt = "pp-%d" % next(self._ids)
        pending = Pending(destination, body, dict(headers or {}), on_confirm)
        self._pending[receipt] = pending
        self._transmit(receipt, pending)

    def confirm(self, event: Receipt) -> Optional[Pending]:
        """The broker has the message: forget it and return it (its callback not yet run)."""
        return self._pending.pop(event.receipt_id, None)

    def refused(self, event: SendRefused) -> Optional[Pending]:
        """The broker refused a message: keep it, and send it again after a backoff."""
        pending = self._pending.get(event.receipt_id)
        if pending is None:
            return None
        pending.backoff = min(pending.backoff * 2, self._max) if pending.backoff else self._initial
        pending.retry_at = time.monotonic() + pending.backoff
        logger.warning("the broker refused %s to %s (%s); sending it again in %.1f s", event.receipt_id,
                       pending.destination, event.reason, pending.backoff)
        return pending

    def next_retry(self) -> Optional[float]:
        """When the next refused message is due again."""
        due = [p.retry_at for p in self._pending.values() if p.retry_at is not None]
        return min(due) if due else None

    def retry(self, now: float) -> None:
        """Send again the refused messages that are due."""
        for receipt, pending in list(self._pending.items()):
            if pending.retry_at is not None and pending.retry_at <= now:
                pending.retry_at = None
                if not self._transmit(receipt, pending):
                    return

    def resend(self) -> None:
        """After a reconnect: send every unconfirmed message again, oldest first; a refused
        one waits for its backoff."""
        now = time.monotonic()
        due = [(r, p) for r, p in self._pending.items() if p.retry_at is None or p.retry_at <= now]
        if due:
            logger.info("re-sending %d unconfirmed messages", len(due))
        for receipt, pending in due:
            pending.retry_at = None
            if not self._transmit(receipt, pending):
                return

    def _transmit(self, receipt: str, pending: Pending) -> bool:
        try:
            self._transport.send(pending.destination, pending.body, receipt=receipt,
                                 headers=pending.headers)
            logger.debug("sent %s to %s", receipt, pending.destination)
            return True
        except NotConnected:
            logger.debug("not connected; %s to %s waits for the broker", receipt, pending.destination)
            return False

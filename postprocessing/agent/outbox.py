"""Outbound messages that must reach the broker: each is sent with a receipt and kept
until the broker confirms it.  After a reconnect the unconfirmed ones are sent again,
in their original order, so an outcome finished while the broker was away still goes."""

import collections
import dataclasses
import itertools
import logging
from typing import Callable, Mapping, Optional

from postprocessing.errors import NotConnected
from postprocessing.transport import Receipt, Transport

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Pending:
    destination: str
    body: bytes
    headers: Mapping[str, str]
    on_confirm: Optional[Callable[[], None]]


class Outbox:
    def __init__(self, transport: Transport) -> None:
        self._transport = transport
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

    def resend(self) -> None:
        """After a reconnect: send every unconfirmed message again, oldest first."""
        if self._pending:
            logger.info("re-sending %d unconfirmed messages", len(self._pending))
        for receipt, pending in list(self._pending.items()):
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

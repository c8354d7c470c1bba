"""The dead-letter model: a message read from the DLQ, what run it was for, how to select,
summarise, reinject and save dead letters.  ``postprocessing dlq`` is the command on top.
"""

import base64
import collections
import dataclasses
import json
import os
from typing import TYPE_CHECKING, AbstractSet, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from postprocessing import messages
from postprocessing.config import Config, queue_destination
from postprocessing.errors import InvalidMessage
from postprocessing.ops.queues import BROKER_DLQ
from postprocessing.transport import Delivery

if TYPE_CHECKING:
    from postprocessing.cli.broker import BrokerSession

REINJECTED_HEADER = "dlq-reinjected"
#: Headers the broker sets; everything else a reinjected message keeps.
BROKER_HEADERS = frozenset({
    "message-id", "destination", "subscription", "ack", "timestamp", "timestamp_in_ms", "expires", "redelivered",
    "content-length", "original-destination", "originalExpiration", "persistent", "priority",
    "_AMQ_ORIG_ADDRESS", "_AMQ_ORIG_QUEUE", "_AMQ_ORIG_MESSAGE_ID", "_AMQ_ORIG_ROUTING_TYPE",
    "_AMQ_ROUTING_TYPE", "dlqDeliveryFailureCause", "_AMQ_DLA_REASON", "destination-type", "receipt",
    "JMSXUserID", "_AMQ_VALIDATED_USER",
})


class DeadLetter:
    """A message read from the DLQ, with what we can tell about its run."""

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.headers: Mapping[str, str] = delivery.headers
        try:
            self.fields: Dict[str, Any] = messages.decode_body(delivery.body, len(delivery.body) + 1)
        except InvalidMessage:
            self.fields = {}

    @property
    def message_id(self) -> str:
        return self.delivery.message_id

    @property
    def original_destination(self) -> Optional[str]:
        value = self.headers.get("original-destination")
        if value:
            return value
        address = self.headers.get("_AMQ_ORIG_ADDRESS")
        return queue_destination(address) if address else None

    @property
    def instrument(self) -> Optional[str]:
        value = self.fields.get("instrument")
        return str(value).upper() if isinstance(value, str) else None

    @property
    def run(self) -> Optional[str]:
        value = self.fields.get("run_number")
        try:
            return str(int(str(value).strip())) if value is not None else None
        except ValueError:
            return None

    def record(self) -> Dict[str, Any]:
        """Everything about the message, as JSON-ready data."""
        try:
            body: Dict[str, Any] = {"body": self.delivery.body.decode("utf-8")}
        except UnicodeDecodeError:
            body = {"body_base64": base64.b64encode(self.delivery.body).decode("ascii")}
        out = {"message_id": self.message_id, "original_destination": self.original_destination,
               "headers": dict(self.headers)}
        out.update(body)
        return out


def read(session: "BrokerSession", dlq: str, limit: int, wait: float) -> List[DeadLetter]:
    """Up to ``limit`` messages of ``dlq``, read with client acknowledgement and left un-acked:
    the broker keeps them unless the caller acks them (reinjected or purged)."""
    session.subscribe(dlq, client_ack=True, prefetch=limit)
    return [DeadLetter(d) for d in session.drain(first_wait=max(wait, 2.0), idle=wait, limit=limit)]


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which dead letters: by message id, original destination, instrument, run numbers (empty: any)."""

    ids: AbstractSet[str] = frozenset()
    destination: Optional[str] = None
    instrument: Optional[str] = None
    runs: AbstractSet[str] = frozenset()

    @property
    def given(self) -> bool:
        return bool(self.ids or self.destination or self.instrument or self.runs)

    def pick(self, letters: Sequence[DeadLetter]) -> List[DeadLetter]:
        chosen = list(letters)
        if self.ids:
            chosen = [m for m in chosen if m.message_id in self.ids]
        if self.destination:
            wanted = queue_destination(self.destination)
            chosen = [m for m in chosen if m.original_destination == wanted]
        if self.instrument:
            chosen = [m for m in chosen if m.instrument == self.instrument.upper()]
        if self.runs:
            chosen = [m for m in chosen if m.run in self.runs]
        return chosen


def summarise(letters: Sequence[DeadLetter]) -> List[Tuple[str, str, str, int]]:
    counts: collections.Counter[Tuple[str, str, str]] = collections.Counter(
        (m.original_destination or "-", m.instrument or "-", m.run or "-") for m in letters)
    return [(d, i, r, n) for (d, i, r), n in sorted(counts.items())]


def dead_letter_queue(cfg: Config, given: Optional[str], broker_kind: str) -> Optional[str]:
    """The DLQ's destination: ``given``, else ``dead_letter_queue``, else the broker's own (None: none)."""
    name = given or cfg.dead_letter_queue or BROKER_DLQ.get(broker_kind, "")
    return queue_destination(name) if name else None


def reinjection(letter: DeadLetter, target: str, when: str) -> Tuple[str, bytes, Dict[str, str]]:
    """The message that sends ``letter`` back to ``target``: its body and own headers, marked reinjected."""
    headers = {k: v for k, v in letter.headers.items() if k not in BROKER_HEADERS}
    headers[REINJECTED_HEADER] = when
    return target, letter.delivery.body, headers


def save(path: str, letters: Sequence[DeadLetter]) -> None:
    """Write the letters as JSON lines to a new file, synced; FileExistsError or OSError otherwise."""
    with open(path, "x", encoding="utf-8") as out:
        for m in letters:
            out.write(json.dumps(m.record()) + "\n")
        out.flush()
        os.fsync(out.fileno())

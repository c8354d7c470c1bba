"""Broker transport: the events it reports and the interface the agent uses.

Only ``postprocessing.transport.stomp`` imports stomp.py; the rest of the package talks
to a :class:`Transport`.  A transport never runs agent code on its receiver thread: it
hands every event to a ``sink`` callable (the agent's inbox ``put``).
"""

import dataclasses
from typing import Callable, Mapping, Optional, Protocol


@dataclasses.dataclass(frozen=True)
class Delivery:
    """A MESSAGE frame received on a subscription."""

    destination: str
    body: bytes
    headers: Mapping[str, str]
    subscription: str
    ack_id: str
    message_id: str
    epoch: int
    #: When the broker took the message in (ms since the epoch), where it said: see
    #: :func:`broker_time`.  A redelivery keeps its first time.
    broker_time_ms: Optional[int] = None

    @property
    def redelivered(self) -> bool:
        return self.headers.get("redelivered", "false") == "true"


def broker_time(kind: str, headers: Mapping[str, str]) -> Optional[int]:
    """When the broker took a message in (ms since the epoch), or None where it does not say.

    ActiveMQ Classic and Artemis stamp ``timestamp`` (ms) on every SEND.  RabbitMQ stamps
    ``timestamp_in_ms`` only with its timestamp interceptor on (3.12+:
    ``message_interceptors.incoming.set_header_timestamp.overwrite = true``; the community
    ``rabbitmq_message_timestamp`` plugin before); its ``timestamp`` is then in seconds, and
    otherwise whatever the producer put there."""
    value = headers.get("timestamp_in_ms" if kind == "rabbitmq" else "timestamp", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


@dataclasses.dataclass(frozen=True)
class Receipt:
    """The broker confirmed a frame sent with a ``receipt`` header."""

    receipt_id: str
    epoch: int


@dataclasses.dataclass(frozen=True)
class Disconnected:
    """The connection of ``epoch`` is gone; its un-acked deliveries go back to the broker."""

    epoch: int
    reason: str


@dataclasses.dataclass(frozen=True)
class SendRefused:
    """The broker refused a frame sent with a ``receipt`` header (an ERROR frame naming it).

    Artemis does this for a SEND it will not route (security, a full address, auto-create
    off); the frame was not stored.  Artemis 2.40 then closes the connection, so a
    :class:`Disconnected` follows.
    """

    receipt_id: str
    epoch: int
    reason: str


Sink = Callable[[object], None]


class Transport(Protocol):
    """What the agent needs from a broker connection."""

    epoch: int
    connected_to: str
    #: Position in the broker list of the broker connected to (-1: none).
    connected_index: int
    #: The kind of broker connected to: "activemq", "artemis" or "rabbitmq".
    kind: str

    @property
    def returns_on_unsubscribe(self) -> bool:
        """Whether dropping a subscription returns its un-acked messages to the queue (ActiveMQ, Artemis)."""

    @property
    def forgets_confirmed_acks(self) -> bool:
        """Whether the broker, SIGKILLed, can forget ACKs it confirmed and redeliver them (RabbitMQ)."""

    def connect(self) -> None:
        """Connect to the first broker that answers; raises TransportError otherwise."""

    def primary_reachable(self) -> bool:
        """While on a backup broker: whether the first broker of the list is back."""

    def subscribe(self, destination: str, sub_id: str, client_ack: bool, prefetch: int) -> None:
        """Subscribe; with ``client_ack`` each delivery must be acked individually."""

    def unsubscribe(self, sub_id: str) -> None:
        """Drop a subscription; the broker takes back what it held un-acked."""

    def send(self, destination: str, body: bytes, receipt: Optional[str] = None,
             headers: Optional[Mapping[str, str]] = None) -> None:
        """Send a persistent message; raises NotConnected when there is no connection."""

    def ack(self, delivery: Delivery, receipt: Optional[str] = None) -> None:
        """Settle a delivery of the current connection; raises NotConnected otherwise.

        With ``receipt`` the broker confirms the ACK with a :class:`Receipt`."""

    def release(self, delivery: Delivery) -> None:
        """Give an un-acked delivery back to the broker (before its subscription is dropped)."""

    def disconnect(self) -> None:
        """Close the connection politely; never raises."""

"""Who sent a message, as the broker vouches for it (not as the sender claims).

Each broker puts the authenticated user of a SEND in its own header, if configured to:

- ActiveMQ Classic: ``JMSXUserID``, with ``populateJMSXUserID="true"`` and
  ``useAuthenticatedPrincipalForJMSXUserID="true"`` on ``<broker>``; the broker
  overwrites a value the sender set itself.
- ActiveMQ Artemis: ``_AMQ_VALIDATED_USER``, with ``<populate-validated-user>true``; its
  STOMP protocol delivers it as ``JMSXUserID``, and a value the sender set itself is
  overwritten (checked on Artemis 2.40).
- RabbitMQ: ``user-id``; the STOMP plugin refuses a SEND whose ``user-id`` is not the
  sender's login, so the header is trustworthy, but only a sender that sets it has one.

A header of another broker kind proves nothing: a client may set any header it likes.
"""

from typing import Mapping, Optional

VALIDATED_USER_HEADER = {
    "activemq": "JMSXUserID",
    "artemis": "JMSXUserID",
    "rabbitmq": "user-id",
}


def validated_user(headers: Mapping[str, str], broker_kind: str) -> Optional[str]:
    """The broker-validated sender of a message, or None when the broker vouches for nobody."""
    name = VALIDATED_USER_HEADER.get(broker_kind)
    if name is None:
        return None
    value = headers.get(name)
    return value if value else None

"""Brokers for the fault harness, all with one interface: kind, host, port, user, password,
``start()``, ``kill()`` (SIGKILL, as a crash) and ``stop()``.

Each listens on the bridge address the hosts reach.  A private ActiveMQ Classic or Artemis binds there;
the system RabbitMQ listens on every interface already, but lets ``guest`` in from loopback
only, so the harness gives it a user of its own.  A new broker kind is one more entry here.
"""

import os
import secrets
from typing import Any

from postprocessing.devtools import activemq, artemis, rabbitmq

RABBITMQ_USER = "ppchaos"


def make_broker(kind: str, workdir: str, host: str) -> Any:
    """A started broker of ``kind`` that listens on ``host``."""
    if kind == "activemq":
        return activemq.LocalActiveMQ(os.path.join(workdir, "activemq"), host=host).start()
    if kind == "artemis":
        return artemis.LocalArtemis(os.path.join(workdir, "artemis"), host=host).start()
    if kind == "rabbitmq":
        broker = rabbitmq.SystemRabbitMQ(host=host).ensure()
        return broker.add_user(RABBITMQ_USER, secrets.token_hex(12))
    raise ValueError("the fault harness has no %r broker; add it to tests/support/chaos/brokers.py" % kind)


def release(broker: Any) -> None:
    """Stop a broker the harness started; the system RabbitMQ keeps running, without our user."""
    broker.stop()
    if broker.kind == "rabbitmq":
        broker.delete_user(RABBITMQ_USER)

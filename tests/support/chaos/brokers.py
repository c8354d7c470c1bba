"""Brokers for the fault harness, all with one interface: kind, host, port, user, password,
``start()``, ``kill()`` (SIGKILL, as a crash) and ``stop()``.

Each is a private broker of the harness, listening on the bridge address the hosts reach:
ActiveMQ Classic, Artemis, or a RabbitMQ node of its own.
A new broker kind is one more entry here.
"""

import os
from typing import Any

from postprocessing.devtools import activemq, artemis, rabbitmq_local


def make_broker(kind: str, workdir: str, host: str) -> Any:
    """A started broker of ``kind`` that listens on ``host``."""
    if kind == "activemq":
        return activemq.LocalActiveMQ(os.path.join(workdir, "activemq"), host=host).start()
    if kind == "artemis":
        return artemis.LocalArtemis(os.path.join(workdir, "artemis"), host=host, journal_sync=True).start()
    if kind == "rabbitmq":
        return rabbitmq_local.LocalRabbitMQ(os.path.join(workdir, "rabbitmq"), host=host).start()
    raise ValueError("the fault harness has no %r broker; add it to tests/support/chaos/brokers.py" % kind)


def release(broker: Any) -> None:
    """Stop a broker the harness started."""
    broker.stop()

"""A private RabbitMQ node with its STOMP plugin, for tests that kill and restart their broker.

It runs Debian's RabbitMQ as a second Erlang node (its own node name, ports, data and log
directories, and plugin list) beside the system service, in its own process group, so a
test can SIGKILL it as a crash would without touching the service the other tests share.
"""

import os
import shutil
from typing import Dict, List, Optional

from postprocessing.devtools.brokerproc import BrokerProcess, free_port

RABBITMQ_LIB = "/usr/lib/rabbitmq/bin"


def available() -> bool:
    return os.path.exists(os.path.join(RABBITMQ_LIB, "rabbitmq-server")) and shutil.which("erl") is not None


class LocalRabbitMQ(BrokerProcess):
    """One RabbitMQ node; ``start``/``kill``/``stop`` keep its data between runs."""

    kind = "rabbitmq"
    title = "RabbitMQ"

    def __init__(self, workdir: str, port: Optional[int] = None, user: str = "guest", password: str = "guest",
                 host: str = "127.0.0.1", management_port: Optional[int] = None) -> None:
        super().__init__(workdir, port, host)
        #: The management plugin's HTTP API on this port; the plugin is off without it.
        self.management_port = management_port
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.user = user
        self.password = password
        self.node = "pp%d@localhost" % self.port

    @property
    def management_url(self) -> str:
        """The management HTTP API, when the node runs the management plugin."""
        if self.management_port is None:
            return ""
        return "http://%s:%d/api" % (self.host, self.management_port)

    def environment(self) -> Dict[str, str]:
        conf = os.path.join(self.workdir, "rabbitmq.conf")
        with open(conf, "w", encoding="utf-8") as handle:
            handle.write("listeners.tcp.1 = 127.0.0.1:%d\n" % self.amqp_port)
            handle.write("stomp.listeners.tcp.1 = %s:%d\n" % (self.host, self.port))
            handle.write("stomp.tcp_listen_options.nodelay = true\n")
            handle.write("loopback_users = none\n")
            handle.write("default_user = %s\ndefault_pass = %s\n" % (self.user, self.password))
            if self.management_port is not None:
                handle.write("management.tcp.ip = %s\nmanagement.tcp.port = %d\n" % (self.host, self.management_port))
        plugins = os.path.join(self.workdir, "enabled_plugins")
        with open(plugins, "w", encoding="utf-8") as handle:
            handle.write("[rabbitmq_stomp,rabbitmq_management].\n" if self.management_port is not None
                         else "[rabbitmq_stomp].\n")
        return dict(
            os.environ, RABBITMQ_NODENAME=self.node, RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port), RABBITMQ_CONFIG_FILE=conf[:-len(".conf")],
            RABBITMQ_ENABLED_PLUGINS_FILE=plugins, RABBITMQ_MNESIA_BASE=os.path.join(self.workdir, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(self.workdir, "log"),
        )

    def command(self) -> List[str]:
        return [os.path.join(RABBITMQ_LIB, "rabbitmq-server")]

"""A private RabbitMQ node with its STOMP plugin, for the tests, the fault harness and the benches.

It runs Debian's RabbitMQ as an Erlang node of its own (its own node name, ports, data and log
directories, and plugin list) beside any system service, which it never touches or needs, in
its own process group, so a test can SIGKILL it as a crash would.  Everything it keeps is in
its work directory: no run leaves queues behind for the next one to recover.
"""

import os
import shutil
import subprocess
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

    def prepare(self) -> None:
        with open(self._conf + ".conf", "w", encoding="utf-8") as handle:
            handle.write("listeners.tcp.1 = 127.0.0.1:%d\n" % self.amqp_port)
            handle.write("stomp.listeners.tcp.1 = %s:%d\n" % (self.host, self.port))
            handle.write("stomp.tcp_listen_options.nodelay = true\n")
            handle.write("loopback_users = none\n")
            handle.write("default_user = %s\ndefault_pass = %s\n" % (self.user, self.password))
            if self.management_port is not None:
                handle.write("management.tcp.ip = %s\nmanagement.tcp.port = %d\n" % (self.host, self.management_port))
        with open(self._plugins, "w", encoding="utf-8") as handle:
            handle.write("[rabbitmq_stomp,rabbitmq_management].\n" if self.management_port is not None
                         else "[rabbitmq_stomp].\n")

    @property
    def _conf(self) -> str:
        return os.path.join(self.workdir, "rabbitmq")

    @property
    def _plugins(self) -> str:
        return os.path.join(self.workdir, "enabled_plugins")

    def environment(self) -> Dict[str, str]:
        return dict(
            os.environ, RABBITMQ_NODENAME=self.node, RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port), RABBITMQ_CONFIG_FILE=self._conf,
            RABBITMQ_ENABLED_PLUGINS_FILE=self._plugins, RABBITMQ_MNESIA_BASE=os.path.join(self.workdir, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(self.workdir, "log"),
        )

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl`` against this node (``ctl("eval", ...)``); its output, or CalledProcessError."""
        result = subprocess.run([os.path.join(RABBITMQ_LIB, "rabbitmqctl"), "-q", "-n", self.node, *args],
                                env=self.environment(), capture_output=True, text=True, timeout=timeout, check=True)
        return result.stdout

    def command(self) -> List[str]:
        return [os.path.join(RABBITMQ_LIB, "rabbitmq-server")]

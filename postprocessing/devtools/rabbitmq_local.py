"""A private RabbitMQ node with its STOMP plugin, for the tests, the fault harness and the benches.

It runs Debian's RabbitMQ as an Erlang node of its own (its own node name, ports, data and log
directories, and plugin list) beside any system service, which it never touches or needs, in
its own process group, so a test can SIGKILL it as a crash would.  Everything it keeps is in
its work directory: no run leaves queues behind for the next one to recover.
"""

import glob
import os
import shutil
import subprocess
from typing import Dict, List, Optional

from postprocessing.devtools.brokerproc import BrokerProcess, free_port

RABBITMQ_LIB = "/usr/lib/rabbitmq/bin"
#: The broker-time interceptor the nodes run (see pp_message_timestamp.erl), built from source.
TIMESTAMP_PLUGIN = "pp_message_timestamp"


def available() -> bool:
    return (os.path.exists(os.path.join(RABBITMQ_LIB, "rabbitmq-server")) and shutil.which("erl") is not None
            and shutil.which("erlc") is not None)


class LocalRabbitMQ(BrokerProcess):
    """One RabbitMQ node; ``start``/``kill``/``stop`` keep its data between runs."""

    kind = "rabbitmq"
    title = "RabbitMQ"

    def __init__(self, workdir: str, port: Optional[int] = None, user: str = "guest", password: str = "guest",
                 host: str = "127.0.0.1", management_port: Optional[int] = None, timestamps: bool = True) -> None:
        super().__init__(workdir, port, host)
        #: Stamp every message with the broker's time, as a facility's RabbitMQ should
        #: (docs/brokers.md); off, the node is Debian's RabbitMQ as installed.
        self.timestamps = timestamps
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
        plugins = ["rabbitmq_stomp"]
        if self.management_port is not None:
            plugins.append("rabbitmq_management")
        if self.timestamps:
            self._build_timestamp_plugin()
            plugins.append(TIMESTAMP_PLUGIN)
        with open(self._plugins, "w", encoding="utf-8") as handle:
            handle.write("[%s].\n" % ",".join(plugins))

    def _build_timestamp_plugin(self) -> None:
        """Compile the broker-time interceptor into a plugin directory of this node's own."""
        system = _system_plugins()
        ebin = os.path.join(self._own_plugins, TIMESTAMP_PLUGIN + "-1.0.0", "ebin")
        os.makedirs(ebin, exist_ok=True)
        common = glob.glob(os.path.join(system, "rabbit_common-*"))[0]
        source = os.path.join(os.path.dirname(os.path.abspath(__file__)), TIMESTAMP_PLUGIN + ".erl")
        subprocess.run(["erlc", "-I", os.path.join(common, "include"), "-pa", os.path.join(common, "ebin"),
                        "-o", ebin, source], check=True, capture_output=True, timeout=120)
        with open(os.path.join(ebin, TIMESTAMP_PLUGIN + ".app"), "w", encoding="utf-8") as handle:
            handle.write('{application, %s, [{description, "broker time on published messages"}, '
                         '{vsn, "1.0.0"}, {modules, [%s]}, {registered, []}, '
                         '{applications, [kernel, stdlib, rabbit]}, {env, []}]}.\n'
                         % (TIMESTAMP_PLUGIN, TIMESTAMP_PLUGIN))

    @property
    def _own_plugins(self) -> str:
        return os.path.join(self.workdir, "plugins")

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
            RABBITMQ_PLUGINS_DIR="%s:%s" % (_system_plugins(), self._own_plugins),
        )

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl`` against this node (``ctl("eval", ...)``); its output, or CalledProcessError."""
        result = subprocess.run([os.path.join(RABBITMQ_LIB, "rabbitmqctl"), "-q", "-n", self.node, *args],
                                env=self.environment(), capture_output=True, text=True, timeout=timeout, check=True)
        return result.stdout

    def command(self) -> List[str]:
        return [os.path.join(RABBITMQ_LIB, "rabbitmq-server")]


def _system_plugins() -> str:
    """The plugin directory of the installed RabbitMQ."""
    found = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins"))
    if not found:
        raise FileNotFoundError("no RabbitMQ plugins under /usr/lib/rabbitmq/lib")
    return found[-1]

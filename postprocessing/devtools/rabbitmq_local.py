"""A private RabbitMQ node with its STOMP plugin, for tests that kill and restart their broker.

It runs Debian's RabbitMQ as a second Erlang node (its own node name, ports, data and log
directories, and plugin list) beside the system service, in its own process group, so a
test can SIGKILL it as a crash would without touching the service the other tests share.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Dict, List, Optional

import psutil

from postprocessing.devtools.activemq import free_port

RABBITMQ_LIB = "/usr/lib/rabbitmq/bin"


def available() -> bool:
    return os.path.exists(os.path.join(RABBITMQ_LIB, "rabbitmq-server")) and shutil.which("erl") is not None


class LocalRabbitMQ:
    """One RabbitMQ node; ``start``/``kill``/``stop`` keep its data between runs."""

    kind = "rabbitmq"

    def __init__(self, workdir: str, port: Optional[int] = None, user: str = "guest", password: str = "guest",
                 host: str = "127.0.0.1") -> None:
        self.workdir = os.path.abspath(workdir)
        self.port = port or free_port()
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.user = user
        self.password = password
        self.host = host
        self.node = "pp%d@localhost" % self.port
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.log_path = os.path.join(self.workdir, "broker.log")

    def environment(self) -> Dict[str, str]:
        os.makedirs(self.workdir, exist_ok=True)
        conf = os.path.join(self.workdir, "rabbitmq.conf")
        with open(conf, "w", encoding="utf-8") as handle:
            handle.write("listeners.tcp.1 = 127.0.0.1:%d\n" % self.amqp_port)
            handle.write("stomp.listeners.tcp.1 = %s:%d\n" % (self.host, self.port))
            handle.write("stomp.tcp_listen_options.nodelay = true\n")
            handle.write("loopback_users = none\n")
            handle.write("default_user = %s\ndefault_pass = %s\n" % (self.user, self.password))
        plugins = os.path.join(self.workdir, "enabled_plugins")
        with open(plugins, "w", encoding="utf-8") as handle:
            handle.write("[rabbitmq_stomp].\n")
        return dict(
            os.environ, RABBITMQ_NODENAME=self.node, RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port), RABBITMQ_CONFIG_FILE=conf[:-len(".conf")],
            RABBITMQ_ENABLED_PLUGINS_FILE=plugins, RABBITMQ_MNESIA_BASE=os.path.join(self.workdir, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(self.workdir, "log"),
        )

    def command(self) -> List[str]:
        return [os.path.join(RABBITMQ_LIB, "rabbitmq-server")]

    def start(self, timeout: float = 90.0) -> "LocalRabbitMQ":
        if self.proc is not None and self.proc.poll() is None:
            return self
        env = self.environment()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         env=env, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("RabbitMQ exited with %s; see %s" % (self.proc.returncode, self.log_path))
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.2)
        self.kill()
        raise RuntimeError("RabbitMQ did not open port %d in %.0f s; see %s" % (self.port, timeout, self.log_path))

    def kill(self) -> None:
        """SIGKILL the node, as a crash would."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM, wait=30.0)

    def _signal(self, sig: int, wait: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # The Erlang VM outlives the start script by a moment: wait until the group is gone.
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(
                p.info["pid"] != os.getpid() and _pgid(p.info["pid"]) == self.proc.pid
                for p in psutil.process_iter(["pid"])):
            time.sleep(0.05)


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1

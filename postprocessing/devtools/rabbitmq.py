"""The machine's RabbitMQ, with its STOMP plugin, as a second broker for the tests.

Unlike ActiveMQ it is a system service: the tests share it and keep apart by using
private queue names.  ``ensure()`` enables ``rabbitmq_stomp`` and starts the server when
its STOMP port does not answer.  ``kill()`` and ``start()`` crash and restart it (the fault
harness does), and ``add_user`` creates a user that may connect from other hosts: RabbitMQ
lets ``guest`` in from loopback only.
"""

import shutil
import signal
import socket
import subprocess
import time
from typing import List

import psutil

STOMP_PORT = 61613


def _answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


class SystemRabbitMQ:
    kind = "rabbitmq"

    def __init__(self, port: int = STOMP_PORT, user: str = "guest", password: str = "guest",
                 host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.user = user
        self.password = password

    def ensure(self, timeout: float = 60.0) -> "SystemRabbitMQ":
        """Make the STOMP port answer, or raise RuntimeError saying why it cannot."""
        if _answers(self.port, self.host):
            return self
        if shutil.which("rabbitmq-plugins") is None:
            raise RuntimeError("rabbitmq-server is not installed")
        if subprocess.run(["rabbitmqctl", "-q", "status"], capture_output=True).returncode != 0:
            subprocess.run(["rabbitmq-server", "-detached"], capture_output=True)
            subprocess.run(["rabbitmqctl", "-q", "await_startup", "--timeout", str(int(timeout))],
                           capture_output=True)
        subprocess.run(["rabbitmq-plugins", "-q", "enable", "rabbitmq_stomp"], capture_output=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _answers(self.port, self.host):
                return self
            time.sleep(0.2)
        raise RuntimeError("RabbitMQ's STOMP port %d does not answer" % self.port)

    def start(self, timeout: float = 120.0) -> "SystemRabbitMQ":
        """Start the server if it is down (``rabbitmq-server -detached``) and wait for its STOMP port."""
        return self.ensure(timeout)

    def kill(self) -> None:
        """SIGKILL the server's Erlang VM, as a crash would, and wait until it is gone."""
        beams = _beams()
        for proc in beams:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(beams, timeout=30)

    def stop(self) -> None:
        """Leave the system service running for the other tests: only ``kill`` takes it down."""

    def add_user(self, user: str, password: str) -> "SystemRabbitMQ":
        """A user with full rights on vhost ``/`` that may connect from any address; this object uses it."""
        if subprocess.run(["rabbitmqctl", "-q", "add_user", user, password], capture_output=True).returncode:
            subprocess.run(["rabbitmqctl", "-q", "change_password", user, password], check=True,
                           capture_output=True)
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", "/", user, ".*", ".*", ".*"],
                       check=True, capture_output=True)
        self.user, self.password = user, password
        return self

    def delete_user(self, user: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True)


def _beams() -> List[psutil.Process]:
    """The Erlang VMs running RabbitMQ on this machine."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if (proc.info["name"] or "").startswith("beam") and any("rabbit" in arg for arg in cmdline):
            found.append(proc)
    return found

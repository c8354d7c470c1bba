"""The machine's RabbitMQ, with its STOMP plugin, as a second broker for the tests.

Unlike ActiveMQ it is a system service: the tests share it and keep apart by using
private queue names.  ``ensure()`` enables ``rabbitmq_stomp`` and starts the server when
its STOMP port does not answer.
"""

import shutil
import socket
import subprocess
import time

STOMP_PORT = 61613


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


class SystemRabbitMQ:
    kind = "rabbitmq"

    def __init__(self, port: int = STOMP_PORT, user: str = "guest", password: str = "guest") -> None:
        self.port = port
        self.user = user
        self.password = password

    def ensure(self, timeout: float = 60.0) -> "SystemRabbitMQ":
        """Make the STOMP port answer, or raise RuntimeError saying why it cannot."""
        if _answers(self.port):
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
            if _answers(self.port):
                return self
            time.sleep(0.5)
        raise RuntimeError("RabbitMQ's STOMP port %d does not answer" % self.port)

"""A private broker as a child process, for tests, the demo and the benchmark.

Each broker kind (ActiveMQ Classic, Artemis, a RabbitMQ node) says how it is started; this
class runs it in a session of its own, waits until its STOMP port answers, and SIGKILLs it
(as a crash would) or stops it, always as a whole process group.
"""

import os
import signal
import socket
import subprocess
import time
from typing import Dict, List, Optional, TypeVar

import psutil

B = TypeVar("B", bound="BrokerProcess")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class BrokerProcess:
    """``start``/``kill``/``stop`` keep the broker's data between runs."""

    kind = ""
    title = "the broker"
    user = ""

    def __init__(self, workdir: str, port: Optional[int], host: str) -> None:
        self.workdir = os.path.abspath(workdir)
        self.host = host
        self.port = port or free_port(host)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.log_path = os.path.join(self.workdir, "broker.log")

    # -- what a broker kind provides ------------------------------------------------------
    def command(self) -> List[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write what the broker reads before each start."""

    def environment(self) -> Optional[Dict[str, str]]:
        return None

    def cwd(self) -> str:
        return self.workdir

    # -- running it -----------------------------------------------------------------------
    def start(self: B, timeout: float = 90.0, wait: bool = True) -> B:
        """Start the broker; unless ``wait`` is false, until its STOMP port answers."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        os.makedirs(self.workdir, exist_ok=True)
        self.prepare()
        command, env = self.command(), self.environment()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=env, cwd=self.cwd())
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s; see %s" % (
                    self.title, self.proc.returncode if self.proc else None, self.log_path))
            if self.answers():
                return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError("%s did not open port %d in %.0f s; see %s" % (self.title, self.port, timeout,
                                                                          self.log_path))

    def answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM, wait=30.0)

    def foreground(self) -> None:
        """Start, say where, and run until Ctrl-C, which stops the broker."""
        self.start()
        print("%s STOMP on %s:%d (user %s); Ctrl-C stops it" % (self.title, self.host, self.port, self.user),
              flush=True)
        try:
            assert self.proc is not None
            self.proc.wait()
        except KeyboardInterrupt:
            self.stop()

    def _signal(self, sig: int, wait: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        group = self.proc.pid
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            self.proc.wait()
        # A broker's VM may outlive its start script by a moment: wait until the group is gone.
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_pgid(p.pid) == group for p in psutil.process_iter()):
            time.sleep(0.05)


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1

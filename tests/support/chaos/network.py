"""Hosts for the fault harness: one network namespace per agent, bridged to the root namespace.

The harness creates and removes everything itself: a bridge ``ppchaos0`` in the root
namespace holding 10.213.77.1/24 (the brokers listen there), and per host a namespace
``ppchaosN`` joined to the bridge by a veth pair, holding 10.213.77.(10+N).  That /24 is used
only here.  A file lock keeps two harness runs on one machine apart, and leftovers of a
crashed run are removed first.

Faults: ``partition`` sets the root end of the host's link down until ``heal``: the host
keeps its address and route, and its packets vanish silently, as when a switch port dies.
``slow`` puts a token-bucket filter on every link, both ways: this kernel has no ``netem``,
so a slow broker is a narrow, deep-buffered pipe rather than a fixed delay.
"""

import fcntl
import logging
import os
import subprocess
from typing import IO, List, Optional

logger = logging.getLogger(__name__)

SUBNET = "10.213.77"
BRIDGE = "ppchaos0"
PREFIX = "ppchaos"
LOCK_PATH = "/run/pp-chaos.lock"
SLOW_TBF = ["tbf", "rate", "96kbit", "burst", "3000", "latency", "3s"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    result = subprocess.run(["ip"] + list(args), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError("ip %s: %s" % (" ".join(args), result.stderr.strip()))
    return result


def _netns_names() -> List[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


class Network:
    """``hosts`` namespaces on a bridge; ``broker_address`` is the root side's address."""

    broker_address = SUBNET + ".1"

    def __init__(self, hosts: int) -> None:
        if not 1 <= hosts <= 200:
            raise ValueError("hosts must be between 1 and 200")
        self.hosts = ["%s%d" % (PREFIX, i + 1) for i in range(hosts)]
        self._lock: Optional[IO[str]] = None
        self.partitioned: set = set()
        self.is_slow = False

    def address(self, host: str) -> str:
        return "%s.%d" % (SUBNET, 10 + self.hosts.index(host) + 1)

    def _root_end(self, host: str) -> str:
        return host + "r"

    def exec_prefix(self, host: str) -> List[str]:
        """Prefix a command with this to run it on ``host``."""
        return ["ip", "netns", "exec", host]

    def create(self) -> "Network":
        if os.geteuid() != 0:
            raise RuntimeError("the fault harness needs root (ip netns, veth, tc)")
        self._lock = open(LOCK_PATH, "w", encoding="utf-8")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self._remove_all()
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", self.broker_address + "/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for host in self.hosts:
            root_end = self._root_end(host)
            _ip("netns", "add", host)
            _ip("link", "add", root_end, "type", "veth", "peer", "name", "eth0", "netns", host)
            _ip("link", "set", root_end, "master", BRIDGE)
            _ip("link", "set", root_end, "up")
            _ip("-n", host, "addr", "add", self.address(host) + "/24", "dev", "eth0")
            _ip("-n", host, "link", "set", "eth0", "up")
            _ip("-n", host, "link", "set", "lo", "up")
        logger.info("network: bridge %s at %s, hosts %s", BRIDGE, self.broker_address, ", ".join(self.hosts))
        return self

    def partition(self, host: str) -> None:
        _ip("link", "set", self._root_end(host), "down")
        self.partitioned.add(host)

    def heal(self, host: str) -> None:
        _ip("link", "set", self._root_end(host), "up")
        self.partitioned.discard(host)

    def slow(self, on: bool) -> None:
        """A narrow pipe on every link, both ways (``on``), or the links as they were."""
        for host in self.hosts:
            for prefix, dev in ((["tc"], self._root_end(host)), (self.exec_prefix(host) + ["tc"], "eth0")):
                args = ["qdisc", "replace", "dev", dev, "root"] + SLOW_TBF if on else [
                    "qdisc", "del", "dev", dev, "root"]
                subprocess.run(prefix + args, capture_output=True, check=on)
        self.is_slow = on

    def _remove_all(self) -> None:
        for name in _netns_names():
            if name.startswith(PREFIX):
                _ip("netns", "del", name, check=False)
        _ip("link", "del", BRIDGE, check=False)

    def remove(self) -> None:
        """Delete the namespaces (their veth pairs go with them) and the bridge; release the lock."""
        self._remove_all()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

"""The broker link: connecting with backoff, noticing a lost connection, failing back.

It only keeps the connection's state and timers; what the agent does on a (re)connect
(subscribe, re-send, re-fit) stays in the loop.
"""

import logging
import time
from typing import Optional

from postprocessing.config import Config
from postprocessing.errors import TransportError
from postprocessing.transport import Disconnected, Transport

logger = logging.getLogger(__name__)


class BrokerLink:
    def __init__(self, config: Config, transport: Transport) -> None:
        self.config = config
        self.transport = transport
        self.connected = False
        self._backoff = config.reconnect_initial_sec
        self.next_connect = 0.0

    def connect(self) -> bool:
        """Try to connect now; on failure schedule the next try, doubling the wait."""
        try:
            self.transport.connect()
        except TransportError as err:
            self.next_connect = time.monotonic() + self._backoff
            logger.warning("broker connection failed (%s); retrying in %.1f s", err, self._backoff)
            self._backoff = min(self._backoff * 2, self.config.reconnect_max_sec)
            return False
        self.connected = True
        self._backoff = self.config.reconnect_initial_sec
        logger.info("connected to broker %s", self.transport.connected_to)
        return True

    def lost(self, event: Disconnected) -> bool:
        """Whether ``event`` ends the current connection (stale ones are ignored)."""
        if event.epoch != self.transport.epoch or not self.connected:
            return False
        logger.warning("lost broker connection: %s", event.reason)
        self.connected = False
        self.next_connect = time.monotonic() + self._backoff
        return True

    def failback_due(self, idle_since: Optional[float]) -> Optional[float]:
        """When to try the first broker again: on a backup, idle (``idle_since``) for a while."""
        if not self.config.failback_interval_sec or not self.connected or self.transport.connected_index <= 0:
            return None
        if idle_since is None:
            return None
        return idle_since + self.config.failback_interval_sec

    def primary_back(self) -> bool:
        """Whether the first broker answers again; if so the link is marked down to switch."""
        if not self.transport.primary_reachable():
            return False
        logger.info("the first broker is back and %s is idle: failing back", self.transport.connected_to)
        self.connected = False
        return True

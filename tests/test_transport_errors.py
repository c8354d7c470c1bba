"""A connection that breaks under the agent: the transport reports it, it never raises OSError.

Found when a frozen agent woke up to a socket the broker had closed: its heartbeat's SEND
raised BrokenPipeError out of the loop and the agent died.
"""

import socket

import pytest

from postprocessing.errors import NotConnected
from postprocessing.transport.stomp import StompTransport

pytestmark = pytest.mark.broker


def test_a_broken_socket_is_not_connected_not_an_oserror(broker):
    events = []
    transport = StompTransport([("127.0.0.1", broker.port)], broker.user, broker.password, events.append,
                               heartbeat_ms=0, broker_type=broker.kind)
    transport.connect()
    try:
        sock = transport._conn.transport.socket
        sock.shutdown(socket.SHUT_WR)  # our side cannot write any more; the reader has not noticed
        with pytest.raises(NotConnected):
            for _ in range(50):  # the first writes may still reach the kernel's buffer
                transport.send("/topic/pp-broken-socket", b"{}")
    finally:
        transport.disconnect()

"""A connection that breaks under the agent: the transport reports it, it never raises OSError.

Found when a frozen agent woke up to a socket the broker had closed: its heartbeat's SEND
raised BrokenPipeError out of the loop and the agent died.
"""

import socket

import pytest

from postprocessing.errors import NotConnected
from postprocessing.transport import Delivery
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


class TornDown:
    """A socket attribute that the receiver thread set to None just after the sender looked."""

    @staticmethod
    def getsockname() -> tuple:
        return ("127.0.0.1", 1)

    def sendall(self, data: bytes) -> None:
        raise AttributeError("'NoneType' object has no attribute 'sendall'")


def test_a_socket_torn_down_by_the_receiver_is_not_connected_not_an_attributeerror(broker):
    """Found by the flaky two-agent redelivery test: an agent frozen past the heartbeat woke up,
    stomp.py's receiver thread tore the socket down (``socket = None``) while the loop sent its
    heartbeat, and stomp.py raised AttributeError out of the loop, which died."""
    events = []
    transport = StompTransport([("127.0.0.1", broker.port)], broker.user, broker.password, events.append,
                               heartbeat_ms=0, broker_type=broker.kind)
    transport.connect()
    try:
        conn = transport._conn
        # stomp.py checks ``socket is not None``, then its cleanup sets it to None before ``sendall``
        sock, conn.transport.socket = conn.transport.socket, TornDown()
        with pytest.raises(NotConnected):
            transport.send("/topic/pp-torn-socket", b"{}")
        with pytest.raises(NotConnected):
            transport.ack(Delivery("/queue/x", b"{}", {}, "s", "m", "m", transport.epoch))
        conn.transport.socket = sock
    finally:
        transport.disconnect()

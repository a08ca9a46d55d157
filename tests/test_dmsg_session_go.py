"""A dmsg session as the reference server (dmsg v1.3.28) takes it.

That server reads the XK handshake through a buffered reader and drops the
session, without a word, if anything beyond message 3 was already read with
it (pkg/dmsg/session_common.go: ErrSessionHandshakeExtraBytes).  Seen on
loopback: a skypty host opening a session to a Go server in order to dial a
peer wrote message 3 and the stream's first yamux frames in one segment; the
Go server closed the TCP connection 2 ms later and logged nothing.
"""

from twisted.internet import protocol, task
from twisted.internet.testing import StringTransport

from skypty.dmsg.session import SETTLE_MAX, SETTLE_MIN, DmsgSession
from skypty.keys import generate_keypair
from skypty.wire.noise import HandshakeFramer, NoiseHandshake, pump_handshake


class TimedTransport(StringTransport):
    """Records each write with the (fake) time it was made: one send each."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.writes = []

    def write(self, data):
        self.writes.append((self.clock.seconds(), bytes(data)))
        super().write(data)


def start_session(clock, server_delay):
    server_pk, server_sk = generate_keypair()
    _client_pk, client_sk = generate_keypair()
    session = DmsgSession(True, client_sk, server_pk, accept_stream=lambda *_: None, reactor=clock)
    transport = TimedTransport(clock)
    session.makeConnection(transport)
    server, framer = NoiseHandshake("XK", False, server_sk), HandshakeFramer()
    (message2,) = pump_handshake(server, framer, transport.writes[0][1])
    clock.advance(server_delay)  # the round trip
    opened = []
    session.ready.addCallback(lambda s: opened.append(s.open_stream(protocol.Protocol())))
    session.dataReceived(message2)
    return session, transport, server, framer, opened


def test_message_3_is_read_alone_and_the_first_stream_follows_a_round_trip_later():
    clock = task.Clock()
    session, transport, server, framer, opened = start_session(clock, server_delay=0.004)
    assert len(transport.writes) == 2 and not opened  # message 1, message 3: nothing else yet
    # what the Go server reads after message 3 must be nothing
    assert pump_handshake(server, framer, transport.writes[1][1]) == [] and server.complete
    assert framer.take_rest() == b""
    clock.advance(SETTLE_MIN)
    assert opened and len(transport.writes) == 3  # the stream's SYN, in a later send
    assert transport.writes[2][0] - transport.writes[1][0] >= SETTLE_MIN


def test_the_hold_back_follows_the_round_trip_within_bounds():
    clock = task.Clock()
    _session, transport, _server, _framer, opened = start_session(clock, server_delay=0.08)
    clock.advance(0.079)
    assert not opened  # a slow link: about one round trip
    clock.advance(0.002)
    assert opened
    clock = task.Clock()
    _session, transport, _server, _framer, opened = start_session(clock, server_delay=3.0)
    clock.advance(SETTLE_MAX)
    assert opened  # never more than SETTLE_MAX


def test_a_session_lost_while_settling_fails_ready_and_leaves_no_timer():
    clock = task.Clock()
    session, _transport, _server, _framer, opened = start_session(clock, server_delay=0.001)
    failures = []
    session.ready.addErrback(failures.append)
    session.connectionLost()
    assert failures and not opened and not clock.getDelayedCalls()

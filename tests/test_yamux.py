import os
import random

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from skypty.wire.yamux import (
    ACK, DATA, INITIAL_WINDOW, PING, SYN, WINDOW_UPDATE, YamuxError, YamuxProtocol, YamuxSession, header,
)
from tests.vectors import load


class Events:
    def __init__(self):
        self.opened, self.data, self.closed, self.reset, self.pongs, self.away = [], {}, [], [], [], []

    def stream_opened(self, sid):
        self.opened.append(sid)

    def stream_data(self, sid, data):
        self.data[sid] = self.data.get(sid, b"") + data

    def stream_closed(self, sid):
        self.closed.append(sid)

    def stream_reset(self, sid):
        self.reset.append(sid)

    def stream_writable(self, sid):
        pass

    def pong(self, value):
        self.pongs.append(value)

    def go_away(self, code):
        self.away.append(code)


def pair():
    """Client and server cores wired back to back (synchronously)."""
    ce, se = Events(), Events()
    box = {}
    client = YamuxSession(True, lambda d: box["s"].receive(d), ce)
    server = YamuxSession(False, lambda d: client.receive(d), se)
    box["s"] = server
    return client, server, ce, se


def test_vector_open_stream_bytes():
    v = load("stream_request.json")
    first = v["request"]["first_bytes_on_new_yamux_stream"]
    sent = []
    session = YamuxSession(True, sent.append, Events())
    sid = session.open_stream()
    session.write(sid, bytes.fromhex(first["envelope"]))
    assert b"".join(sent).hex() == first["concatenated"]
    reply = v["response_side"]["envelopes"]["yamux_for_server_reply_on_A_stream"]
    sent.clear()
    server = YamuxSession(False, sent.append, Events())
    server.receive(bytes.fromhex(first["yamux_window_update_syn"]))
    assert sent[0].hex() == reply["yamux_window_update_ack"]
    server.write(1, b"x" * 0x12e)
    assert sent[1][:12].hex() == reply["yamux_data_header"]
    # the server side opens even ids from 2
    assert server.open_stream() == 2


def test_streams_both_ways_half_close_and_reset():
    client, server, ce, se = pair()
    a = client.open_stream()
    client.write(a, b"hello")
    assert se.opened == [a] and se.data[a] == b"hello"
    b = server.open_stream()
    server.write(b, b"back")
    assert ce.opened == [b] and ce.data[b] == b"back"
    client.close_stream(a)
    assert se.closed == [a]
    server.write(a, b"still open the other way")
    assert ce.data[a] == b"still open the other way"
    server.reset_stream(b)
    assert ce.reset == [b]
    client.ping(7)
    assert ce.pongs == [7]
    server.go_away()
    assert ce.away == [0]


def test_window_stops_the_sender_until_data_is_consumed():
    client, server, ce, se = pair()
    sid = client.open_stream()
    queued = client.write(sid, b"x" * (10 * 1024 * 1024))
    assert len(se.data[sid]) == INITIAL_WINDOW  # exactly one window, then nothing
    assert queued == 10 * 1024 * 1024 - INITIAL_WINDOW
    server.consumed(sid, INITIAL_WINDOW // 2 - 1)
    assert len(se.data[sid]) == INITIAL_WINDOW  # below half a window: no update yet
    server.consumed(sid, 1)
    assert len(se.data[sid]) == INITIAL_WINDOW + INITIAL_WINDOW // 2


@given(st.lists(st.tuples(st.integers(0, 3), st.binary(min_size=1, max_size=70000)), max_size=30),
       st.integers(1, 9000))
@settings(max_examples=40, deadline=None)
def test_interleaved_streams_deliver_in_order(writes, chunk):
    ce, se = Events(), Events()
    wire = []
    client = YamuxSession(True, wire.append, ce)
    server = YamuxSession(False, lambda d: None, se)
    sids = [client.open_stream() for _ in range(4)]
    expected = {s: b"" for s in sids}
    for which, data in writes:
        client.write(sids[which], data)
    stream = b"".join(wire)
    pos = 0
    while pos < len(stream):
        server.receive(stream[pos:pos + chunk])
        pos += chunk
    for which, data in writes:
        expected[sids[which]] += data
    for s in sids:
        got = se.data.get(s, b"")
        assert expected[s].startswith(got)
        assert len(got) == min(len(expected[s]), INITIAL_WINDOW)


@pytest.mark.parametrize("frame", [
    header(DATA, 0, 1, 0).replace(b"\x00", b"\x01", 1),      # version 1
    header(7, 0, 1, 0),                                         # unknown type
    header(DATA, SYN, 2, 0),                                    # a client must open odd ids
    header(DATA, 0, 1, 2**32 - 1),                              # a 4 GiB frame: refused, nothing allocated
    header(WINDOW_UPDATE, SYN, 1, 0) + header(WINDOW_UPDATE, SYN, 1, 0),  # duplicate SYN
])
def test_hostile_frames_raise_yamux_error(frame):
    server = YamuxSession(False, lambda d: None, Events())
    with pytest.raises(YamuxError):
        server.receive(frame)


def test_overrunning_the_window_is_an_error():
    server = YamuxSession(False, lambda d: None, Events())
    server.receive(header(WINDOW_UPDATE, SYN, 1, 0))
    with pytest.raises(YamuxError):
        for _ in range(5):
            server.receive(header(DATA, 0, 1, 65536) + bytes(65536))


@given(st.binary(max_size=400))
def test_random_bytes_only_raise_yamux_error(data):
    s = YamuxSession(False, lambda d: None, Events())
    try:
        s.receive(data)
    except YamuxError:
        pass
    assert len(s._buf) <= 12 + INITIAL_WINDOW


# -- Twisted glue --------------------------------------------------------------------

class Collect(protocol.Protocol):
    def __init__(self):
        self.data = []
        self.size = 0
        self.done = defer.Deferred()
        self.waiters = []

    def dataReceived(self, data):
        self.data.append(data)
        self.size += len(data)

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(b"".join(self.data))


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)

    def connectionLost(self, reason):
        pass


def memory_pair(accept, clock=None):
    from twisted.test.iosim import connect, makeFakeClient, makeFakeServer

    clock = clock or task.Clock()
    client = YamuxProtocol(True, reactor=clock, keepalive=0)
    server = YamuxProtocol(False, accept_stream=accept, reactor=clock, keepalive=0)
    pump = connect(server, makeFakeServer(server), client, makeFakeClient(client), greet=False)
    return client, server, pump


def test_paused_reader_back_pressures_the_writer():
    readers = []

    def accept(stream):
        p = Collect()
        readers.append((stream, p))
        return p

    client, server, pump = memory_pair(accept)
    sender = Collect()
    client.open_stream(sender)
    pump.flush()
    stream, reader = readers[0]
    stream.pauseProducing()
    payload = os.urandom(4 * 1024 * 1024)
    sender.transport.write(payload)
    pump.flush()
    assert reader.size == 0
    assert sum(len(d) for d in stream._held) <= INITIAL_WINDOW  # bounded by the window
    stream.resumeProducing()
    for _ in range(200):
        pump.flush()
        if reader.size == len(payload):
            break
    assert b"".join(reader.data) == payload


def test_keepalive_closes_a_silent_session():
    clock = task.Clock()
    session = YamuxProtocol(True, reactor=clock)
    transport = StringTransport()
    session.makeConnection(transport)
    clock.advance(30)
    assert transport.value().startswith(header(PING, SYN, 0, 1))
    clock.advance(29)
    assert not transport.disconnecting
    session.dataReceived(header(PING, ACK, 0, 1))  # answered: fine
    clock.advance(30)
    clock.advance(30)  # the second ping is never answered
    assert transport.disconnecting or transport.disconnected
    session.connectionLost(None)


def test_a_session_given_longer_stays_through_minutes_of_silence_then_closes():
    # #23: a dmsg session carries shells; ending it after 60 s of outage ended them.
    clock = task.Clock()
    session = YamuxProtocol(True, reactor=clock, dead_after=220)
    transport = StringTransport()
    session.makeConnection(transport)
    clock.pump([10] * 20)  # 200 s: pings every 30 s, none answered
    assert not transport.disconnecting
    assert transport.value().count(header(PING, SYN, 0, 0)[:2]) >= 6
    clock.pump([10, 10, 1])
    assert transport.disconnecting or transport.disconnected
    session.connectionLost(None)


def test_any_byte_from_the_peer_counts_as_contact():
    clock = task.Clock()
    session = YamuxProtocol(True, reactor=clock)
    transport = StringTransport()
    session.makeConnection(transport)
    for _ in range(6):  # the peer never answers our pings, but pings us
        clock.advance(20)
        session.dataReceived(header(PING, SYN, 0, 7))
    assert not transport.disconnecting
    clock.pump([10] * 7)
    assert transport.disconnecting or transport.disconnected
    session.connectionLost(None)


class Exploding(protocol.Protocol):
    """A stream handler with a bug a hostile peer can reach."""

    def dataReceived(self, data):
        if b"boom" in data:
            raise ValueError("handler bug")
        self.transport.write(data)

    def connectionLost(self, reason):
        pass


def test_a_faulty_stream_handler_ends_that_stream_only():
    # Regression (#13.5): an exception in one stream's dataReceived unwound
    # through the session's parser and dropped every other stream with it.
    client, server, pump = memory_pair(lambda stream: Exploding())
    good, bad = Collect(), Collect()
    client.open_stream(good)
    client.open_stream(bad)
    pump.flush()
    bad.transport.write(b"boom")
    good.transport.write(b"hello")
    pump.flush()
    assert bad.done.called  # reset by the server: that stream is over
    assert not good.done.called
    assert b"".join(good.data) == b"hello"
    good.transport.write(b" again")
    pump.flush()
    assert b"".join(good.data) == b"hello again"
    assert not client.closed.called and not server.closed.called
    assert len(server.streams) == 1


class LoopbackTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_several_streams_over_real_tcp(self):
        factory = protocol.Factory()
        factory.buildProtocol = lambda addr: YamuxProtocol(False, accept_stream=lambda s: Echo(), keepalive=0)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = yield protocol.ClientCreator(reactor, YamuxProtocol, True, keepalive=0).connectTCP(
            "127.0.0.1", port.getHost().port)
        payloads, readers = [], []
        for i in range(4):
            reader = Collect()
            yield client.open_stream(reader)
            data = random.Random(i).randbytes(1024 * 1024)
            payloads.append(data)
            readers.append(reader)
            reader.transport.write(data)
        deadline = reactor.seconds() + 20
        while any(r.size < len(p) for r, p in zip(readers, payloads)):
            self.assertLess(reactor.seconds(), deadline)
            yield task.deferLater(reactor, 0.01, lambda: None)
        for r, p in zip(readers, payloads):
            self.assertEqual(b"".join(r.data), p)
        client.transport.loseConnection()
        yield client.closed


def test_a_stream_we_open_may_grant_a_larger_window():
    """A dialled stream lets its peer send up to *window* ahead (a SYN window
    update with the extra, as hashicorp/yamux does); re-granted at half."""
    from skypty.wire.yamux import INITIAL_WINDOW, MAX_WINDOW, YamuxSession

    class Events:
        def __init__(self):
            self.data = []

        def stream_opened(self, sid):
            pass

        def stream_data(self, sid, data):
            self.data.append(data)

        def stream_closed(self, sid):
            pass

        def stream_reset(self, sid):
            pass

        def stream_writable(self, sid):
            pass

    a_out, b_out = [], []
    a_events, b_events = Events(), Events()
    a = YamuxSession(True, a_out.append, a_events)
    b = YamuxSession(False, b_out.append, b_events)
    sid = a.open_stream(window=2 * 1024 * 1024)
    for chunk in a_out:
        b.receive(chunk)
    a_out.clear()
    for chunk in b_out:
        a.receive(chunk)
    b_out.clear()
    assert b.streams[sid].send_window == 2 * 1024 * 1024
    assert b.write(sid, b"x" * (3 * 1024 * 1024)) == 1024 * 1024  # the rest waits for a re-grant
    for chunk in b_out:
        a.receive(chunk)
    assert sum(len(d) for d in a_events.data) == 2 * 1024 * 1024
    a.consumed(sid, INITIAL_WINDOW)
    assert not a_out  # not yet half of the window
    a.consumed(sid, 1024 * 1024 - INITIAL_WINDOW)
    assert a_out  # a window update for the first half
    assert a.open_stream(window=1 << 40) and a.streams[sid + 2].window == MAX_WINDOW


def test_a_probe_closes_a_session_whose_path_died_and_spares_a_live_one():
    from twisted.internet import task

    from skypty.wire.yamux import ACK, PING, YamuxProtocol, header

    clock = task.Clock()
    proto = YamuxProtocol(True, reactor=clock, keepalive=0)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.probe(3.0)
    assert transport.value()  # the ping went out
    clock.advance(1.0)
    proto.dataReceived(header(PING, ACK, 0, 1))  # an answer: alive
    clock.advance(5.0)
    assert not transport.disconnecting
    proto.probe(3.0)
    clock.advance(2.9)
    assert not transport.disconnecting
    clock.advance(0.2)  # silence: the path is gone
    assert transport.disconnecting

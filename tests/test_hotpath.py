"""The keystroke hot path: gob fast paths (same bytes, values and errors as
the generic code), held pty.Write replies, the client's non-blocking
channels, and write_now on Twisted transports."""

import socket
import threading

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet import abstract, defer
from twisted.internet.task import Clock

from skypty.client.transport import PlainChannel
from skypty.wire import gob
from skypty.wire import types as T
from skypty.wire.rpc import HOLD_SECONDS, Method, RPCClientConnection, RPCError, RPCServerConnection
from skypty.writenow import write_now
from tests.fuzz.strategies import GO_TYPES, values_of
from tests.vectors import load

# -- gob: fast == generic ------------------------------------------------------------

ENCODED = [t for t in GO_TYPES if t is not T.SHA256]  # SHA256 values are lists of 32: covered by StreamResponse


@pytest.mark.parametrize("gotype", ENCODED, ids=repr)
def test_fast_encoder_writes_the_generic_bytes(gotype):
    @given(st.lists(values_of(gotype), min_size=1, max_size=4))
    @settings(max_examples=30, deadline=None)
    def run(values):
        fast, generic = gob.Encoder(), gob.Encoder(fast=False)
        for value in values:
            assert fast.encode(value, gotype) == generic.encode(value, gotype)

    run()


def _take_all(stream, expected, fast):
    """Every value of *stream* read as *expected*, or the GobError's text."""
    dec = gob.Decoder(fast=fast)
    dec.feed(stream)
    out = []
    try:
        while (v := dec.next_value(expected)) is not gob.NEED_MORE:
            out.append(v)
    except gob.GobError as e:
        out.append(("error", str(e)))
    return out


def _reference_streams():
    vectors = load("gob.json")["scenarios"]
    return [bytes.fromhex(sc[d]["stream"]) for sc in vectors.values() for d in ("client_to_server", "server_to_client")]


@pytest.mark.parametrize("expected", GO_TYPES, ids=repr)
def test_fast_decoder_agrees_with_the_generic_one_on_mutated_streams(expected):
    streams = _reference_streams()

    @given(st.sampled_from(streams), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4))
    @settings(max_examples=60, deadline=None)
    def run(stream, edits):
        data = bytearray(stream)
        for where, byte in edits:
            data[where % len(data)] = byte
        assert _take_all(bytes(data), expected, True) == _take_all(bytes(data), expected, False)

    run()


@pytest.mark.parametrize("wire_type, expected", [
    (T.UINT, T.UINT16), (T.INT, T.UINT), (T.UINT, T.INT), (T.INT, T.UINT8), (T.BOOL, T.INT), (T.INT, T.BOOL),
    (T.STRING, T.BYTES), (T.BYTES, T.STRING), (T.INT, T.Request),
])
def test_fast_decoder_range_and_type_errors_match(wire_type, expected):
    values = {T.UINT: [0, 7, 65535, 65536, 2**64 - 1], T.INT: [-1, 0, 300, 2**63 - 1, -(2**63)],
              T.BOOL: [True, False], T.STRING: ["x", ""], T.BYTES: [b"x", b""]}[wire_type]
    enc = gob.Encoder()
    stream = b"".join(enc.encode(v, wire_type) for v in values)
    for i in range(len(values)):  # each value first in its own stream, so one error does not hide the rest
        sub = gob.Encoder()
        one = sub.encode(values[i], wire_type)
        assert _take_all(one, expected, True) == _take_all(one, expected, False)
    assert _take_all(stream, expected, True) == _take_all(stream, expected, False)


def test_a_struct_read_as_another_with_fewer_and_unknown_fields():
    # A Response read as a Request: Error is unknown there (decoded, then ignored, as Go does).
    enc = gob.Encoder()
    stream = b"".join(enc.encode(T.Response.cls(service_method="pty.Read", seq=s, error=e), T.Response)
                      for s, e in ((0, ""), (1, "EOF"), (2**64 - 1, "x" * 300)))
    fast = _take_all(stream, T.Request, True)
    assert fast == _take_all(stream, T.Request, False)
    assert [(r.service_method, r.seq) for r in fast] == [("pty.Read", 0), ("pty.Read", 1), ("pty.Read", 2**64 - 1)]


# -- held pty.Write replies ------------------------------------------------------------

def _server(clock):
    reads = []

    def read(n):
        d = defer.Deferred()
        reads.append(d)
        return d

    methods = {"pty.Read": Method(T.INT, T.BYTES, read),
               "pty.Write": Method(T.BYTES, T.INT, lambda data: len(data), hold=True)}
    sends = []
    server = RPCServerConnection(methods, sends.append, call_later=clock.callLater)
    return server, reads, sends


def _replies(client, sends):
    out = {}
    for data in sends:
        for seq, value in client.data_received(data):
            out[seq] = value
    return out


def test_a_write_reply_rides_with_the_read_reply():
    clock, client = Clock(), RPCClientConnection()
    server, reads, sends = _server(clock)
    read_seq, data = client.start_call("pty.Read", 1024, T.INT, T.BYTES)
    server.data_received(data)
    write_seq, data = client.start_call("pty.Write", b"ab", T.BYTES, T.INT)
    server.data_received(data)
    assert sends == []  # held: a Read is outstanding
    reads[0].callback(b"ab")  # the echo
    assert len(sends) == 1  # one send carries both replies, the echo first
    assert _replies(client, sends) == {read_seq: b"ab", write_seq: 2}
    assert clock.getDelayedCalls() == []


def test_a_held_reply_goes_alone_after_the_hold():
    clock, client = Clock(), RPCClientConnection()
    server, reads, sends = _server(clock)
    server.data_received(client.start_call("pty.Read", 1024, T.INT, T.BYTES)[1])
    seqs = []
    for key in (b"a", b"b", b"c"):  # no echo (stty -echo): the replies wait together
        seq, data = client.start_call("pty.Write", key, T.BYTES, T.INT)
        seqs.append(seq)
        server.data_received(data)
    clock.advance(HOLD_SECONDS * 0.9)
    assert sends == []
    clock.advance(HOLD_SECONDS * 0.2)
    assert len(sends) == 1 and _replies(client, sends) == {s: 1 for s in seqs}


def test_without_another_call_outstanding_a_write_reply_is_not_held():
    clock, client = Clock(), RPCClientConnection()
    server, reads, sends = _server(clock)
    seq, data = client.start_call("pty.Write", b"xyz", T.BYTES, T.INT)
    server.data_received(data)
    assert _replies(client, sends) == {seq: 3}
    assert clock.getDelayedCalls() == []


def test_errors_are_never_held_and_a_lost_connection_drops_the_timer():
    clock, client = Clock(), RPCClientConnection()
    server, reads, sends = _server(clock)
    server.methods["pty.Write"] = Method(T.BYTES, T.INT, lambda data: defer.fail(RPCError("EOF")), hold=True)
    read_seq, data = client.start_call("pty.Read", 1024, T.INT, T.BYTES)
    server.data_received(data)
    seq, data = client.start_call("pty.Write", b"a", T.BYTES, T.INT)
    server.data_received(data)
    assert str(_replies(client, sends)[seq]) == "EOF"
    server.methods["pty.Write"] = Method(T.BYTES, T.INT, len, hold=True)
    server.data_received(client.start_call("pty.Write", b"a", T.BYTES, T.INT)[1])
    assert len(clock.getDelayedCalls()) == 1
    server.connection_lost()
    assert clock.getDelayedCalls() == []


def test_held_replies_keep_the_gob_stream_valid_when_a_later_reply_defines_types():
    # The held Write reply is encoded when it goes, after the reply it rides
    # with: a first Read reply (defining nothing new) or a first error.
    clock, client = Clock(), RPCClientConnection()
    server, reads, sends = _server(clock)
    read_seq, data = client.start_call("pty.Read", 1024, T.INT, T.BYTES)
    server.data_received(data)
    write_seq, data = client.start_call("pty.Write", b"a", T.BYTES, T.INT)
    server.data_received(data)
    reads[0].errback(RPCError("EOF"))  # the first Response on the stream defines the Response type
    replies = _replies(client, sends)
    assert str(replies[read_seq]) == "EOF" and replies[write_seq] == 1


# -- the client's channel ------------------------------------------------------------------

def test_channel_recv_waits_up_to_its_timeout_then_raises():
    a, b = socket.socketpair()
    a.settimeout(0.05)
    channel = PlainChannel(a)
    with pytest.raises(socket.timeout):
        channel.recv()
    b.sendall(b"hello")
    assert channel.recv() == b"hello"
    b.close()
    assert channel.recv() == b""
    channel.close()


def test_channel_send_finishes_a_write_larger_than_the_socket_buffer():
    a, b = socket.socketpair()
    a.settimeout(5)
    channel = PlainChannel(a)
    payload = bytes(range(256)) * 40000  # ~10 MB: many partial sends
    got = []
    reader = threading.Thread(target=lambda: got.append(b"".join(iter(lambda: b.recv(1 << 20), b""))))
    reader.start()
    channel.send(payload)
    a.shutdown(socket.SHUT_WR)
    reader.join(10)
    assert got == [payload]
    channel.close()
    b.close()


def test_channel_send_times_out_when_the_peer_never_reads():
    a, b = socket.socketpair()
    a.settimeout(0.1)
    channel = PlainChannel(a)
    with pytest.raises(socket.timeout):
        channel.send(b"x" * (64 << 20))
    channel.close()
    b.close()


# -- write_now --------------------------------------------------------------------------------

class _Reactor:
    def __init__(self):
        self.writers = set()

    def addWriter(self, w):
        self.writers.add(w)

    def removeWriter(self, w):
        self.writers.discard(w)

    def addReader(self, r):
        pass

    def removeReader(self, r):
        pass


class _Descriptor(abstract.FileDescriptor):
    def __init__(self, takes):
        super().__init__(_Reactor())
        self.connected = 1
        self.takes = list(takes)  # how many bytes each writeSomeData accepts
        self.written = []

    def writeSomeData(self, data):
        n = min(self.takes.pop(0) if self.takes else len(data), len(data))
        self.written.append(bytes(data[:n]))
        return n


def test_write_now_writes_in_the_callers_turn_when_nothing_is_queued():
    d = _Descriptor([])
    write_now(d, b"key")
    assert d.written == [b"key"] and not d.reactor.writers


def test_write_now_queues_the_rest_and_keeps_the_order():
    d = _Descriptor([2, 0])
    write_now(d, b"abcd")  # the kernel takes 2 bytes: the rest waits for writability
    assert d.written == [b"ab"] and d in d.reactor.writers
    write_now(d, b"ef")  # something is queued: this must not overtake it
    assert d.written == [b"ab"]
    while d in d.reactor.writers:
        d.doWrite()
    assert b"".join(d.written) == b"abcdef"

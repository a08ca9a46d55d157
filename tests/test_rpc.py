
import pytest
from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from skypty.wire import gob
from skypty.wire import types as T
from skypty.wire.rpc import (
    Method, RPCClientConnection, RPCClientProtocol, RPCError, RPCServerConnection, RPCServerProtocol,
)
from tests.vectors import load



def pty_methods(log):
    """Stand-ins with the reference gateway's signatures; Read blocks until fed."""
    reads = []

    def read(n):
        d = defer.Deferred()
        reads.append(d)
        return d

    methods = {
        "pty.Start": Method(T.CommandReqV1, T.EMPTY, lambda req: log.append(("start", req)) or T.EMPTY.cls()),
        "pty.Read": Method(T.INT, T.BYTES, read),
        "pty.Write": Method(T.BYTES, T.INT, lambda data: len(data)),
        "pty.SetPtySize": Method(T.WinSize, T.EMPTY, lambda ws: log.append(("size", ws)) or T.EMPTY.cls()),
        "pty.Stop": Method(T.EMPTY, T.EMPTY, lambda _: T.EMPTY.cls()),
    }
    return methods, reads


def test_replaying_the_reference_client_gives_the_reference_server_stream(monkeypatch):
    monkeypatch.setattr(gob, "FIRST_USER_ID", gob.LEGACY_FIRST_ID)  # the capture is from a Go < 1.21 build
    sc = load("gob.json")["scenarios"]["pty"]
    log, out = [], []
    methods, reads = pty_methods(log)
    server = RPCServerConnection(methods, out.append)
    stream = bytes.fromhex(sc["client_to_server"]["stream"])
    for i in range(0, len(stream), 7):  # arbitrary chunking
        server.data_received(stream[i:i + 7])
    assert len(reads) == 2
    reads[0].callback(b"hello\n")
    reads[1].errback(RPCError("EOF"))
    # Replies go out as calls finish; reorder to the recorded order (Read 1 finished before Write 2 there).
    expected = [bytes.fromhex(m["hex"]) for m in sc["server_to_client"]["messages"]]
    assert sorted(out) == sorted(expected)
    assert b"".join(expected) == bytes.fromhex(sc["server_to_client"]["stream"])
    assert log[0][1].name == "/bin/echo" and log[1][1].rows == 40


def pump(client, server):
    """Connect a client core and a server core in memory; -> call(method, arg, at, rt)."""
    results = {}
    outbox = []

    def call(method, arg, at, rt):
        seq, data = client.start_call(method, arg, at, rt)
        server.data_received(data)
        deliver()
        return seq

    def deliver():
        while outbox:
            for s, value in client.data_received(outbox.pop(0)):
                results[s] = value

    server.send = lambda data: (outbox.append(data), deliver())
    return call, results


def test_concurrent_calls_a_blocked_read_does_not_stop_a_write():
    methods, reads = pty_methods([])
    client = RPCClientConnection()
    server = RPCServerConnection(methods, None)
    call, results = pump(client, server)
    read_seq = call("pty.Read", 1024, T.INT, T.BYTES)
    write_seq = call("pty.Write", b"abc", T.BYTES, T.INT)
    assert results == {write_seq: 3}
    reads[0].callback(b"out")
    assert results[read_seq] == b"out"


def test_unknown_methods_and_services_get_go_texts():
    methods, _ = pty_methods([])
    client = RPCClientConnection()
    server = RPCServerConnection(methods, None)
    call, results = pump(client, server)
    a = call("pty.StartSession", T.CommandReq.cls(name="sh"), T.CommandReq, T.STRING)
    b = call("nope.Thing", 1, T.INT, T.INT)
    c = call("pty.Write", b"still works", T.BYTES, T.INT)
    assert str(results[a]) == "rpc: can't find method pty.StartSession"
    assert str(results[b]) == "rpc: can't find service nope.Thing"
    assert results[c] == 11


def test_handler_errors_become_error_strings():
    def boom(_):
        raise RPCError("a pty session is already running")

    def crash(_):
        raise ValueError("internal detail")

    server = RPCServerConnection({"pty.Start": Method(T.CommandReq, T.EMPTY, boom),
                                  "pty.Stop": Method(T.EMPTY, T.EMPTY, crash)}, None)
    client = RPCClientConnection()
    call, results = pump(client, server)
    s1 = call("pty.Start", T.CommandReq.cls(), T.CommandReq, T.EMPTY)
    s2 = call("pty.Stop", T.EMPTY.cls(), T.EMPTY, T.EMPTY)
    assert str(results[s1]) == "a pty session is already running"
    assert str(results[s2]) == "internal detail"


def test_too_many_outstanding_calls_pause_reading():
    paused = []
    hang = Method(T.INT, T.INT, lambda n: defer.Deferred())
    server = RPCServerConnection({"pty.Read": hang}, lambda data: None,
                                pause=lambda: paused.append(True), resume=lambda: paused.append(False))
    client = RPCClientConnection()
    for _ in range(100):
        server.data_received(client.start_call("pty.Read", 1, T.INT, T.INT)[1])
    assert server.outstanding == 64 and paused == [True]


class LoopbackTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_twisted_protocols_over_tcp(self):
        methods, reads = pty_methods([])
        closed = defer.Deferred()
        factory = protocol.Factory()
        factory.buildProtocol = lambda addr: RPCServerProtocol(methods, on_close=lambda: closed.callback(None))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = yield protocol.ClientCreator(reactor, RPCClientProtocol).connectTCP(
            "127.0.0.1", port.getHost().port)
        pending_read = client.call("pty.Read", 4096, T.INT, T.BYTES)
        n = yield client.call("pty.Write", b"x" * 100000, T.BYTES, T.INT)
        self.assertEqual(n, 100000)
        err = yield self.assertFailure(client.call("pty.Nope", T.EMPTY.cls(), T.EMPTY, T.EMPTY), RPCError)
        self.assertIn("can't find method", str(err))
        client.transport.loseConnection()
        yield self.assertFailure(pending_read, RPCError)
        yield closed


def test_a_server_refuses_a_call_over_its_cap_before_buffering_it():
    from skypty.errors import ProtocolError
    from skypty.wire import gob
    from skypty.wire.rpc import MAX_CALL

    server = RPCServerConnection(pty_methods([])[0], lambda data: None)
    with pytest.raises(ProtocolError, match="over the limit"):
        server.data_received(gob.encode_uint(MAX_CALL + 1) + b"\x00" * 100)
    # ... while a 1 MiB pty.Write still goes through
    server = RPCServerConnection(pty_methods([])[0], None)
    call, results = pump(RPCClientConnection(), server)
    assert results[call("pty.Write", b"x" * (1 << 20), T.BYTES, T.INT)] == 1 << 20


def test_a_peer_that_does_not_read_its_replies_stops_being_read():
    # Fuzzing noted it: replies to a peer that sends calls but never reads
    # grew the transport's write buffer without bound.  The transport pauses
    # its producer (the protocol) past its high-water mark; the protocol then
    # stops reading that peer, and resumes only when every hold is released.
    from twisted.internet.testing import StringTransport

    from skypty.wire.rpc import RPCServerProtocol

    proto = RPCServerProtocol({})
    transport = StringTransport()
    proto.makeConnection(transport)
    assert transport.producer is proto and transport.streaming
    proto.pauseProducing()  # as the transport does when its buffer is full
    assert transport.producerState == "paused"
    proto._hold("calls")  # too many calls outstanding as well
    proto.resumeProducing()  # the buffer drained...
    assert transport.producerState == "paused"  # ...but the calls still hold it
    proto._release("calls")
    assert transport.producerState == "producing"

"""Fuzz: the net/rpc server and client cores (sans-I/O, over gob)."""

from hypothesis import example, given, strategies as st
from twisted.internet import defer

from skypty.errors import ProtocolError
from skypty.wire import gob
from skypty.wire import types as T
from skypty.wire.rpc import MAX_OUTSTANDING, Method, RPCClientConnection, RPCError, RPCServerConnection
from tests.fuzz import fuzz, only
from tests.fuzz.strategies import GO_TYPES, chunk_sizes, chunked, edits, mutate, values_of
from tests.vectors import load

CAP = 8192
_GOB = load("gob.json")["scenarios"]
CLIENT_STREAMS = [bytes.fromhex(sc["client_to_server"]["stream"]) for sc in _GOB.values()]
SERVER_STREAMS = [bytes.fromhex(sc["server_to_client"]["stream"]) for sc in _GOB.values()]


def pty_like_methods():
    """The reference gateway's signatures; pty.Read never answers (a blocked read)."""
    return {
        "pty.Start": Method(T.CommandReqV1, T.EMPTY, lambda req: T.EMPTY.cls()),
        "pty.StartSession": Method(T.CommandReq, T.STRING, lambda req: "s1"),
        "pty.Exec": Method(T.CommandExecReq, T.CommandExecResult, lambda req: T.CommandExecResult.cls()),
        "pty.Read": Method(T.INT, T.BYTES, lambda n: defer.Deferred()),
        "pty.Write": Method(T.BYTES, T.INT, lambda data: len(data)),
        "pty.SetPtySize": Method(T.WinSize, T.EMPTY, lambda ws: T.EMPTY.cls()),
        "pty.Stop": Method(T.EMPTY, T.EMPTY, lambda _: defer.fail(RPCError("EOF"))),
        "whitelist.WhitelistAdd": Method(T.PubKeys, T.EMPTY, lambda keys: T.EMPTY.cls()),
    }


def check_replies(sent):
    """Whatever the server wrote must be whole Response + body pairs."""
    dec = gob.Decoder()
    dec.feed(b"".join(sent))
    while (header := dec.next_value(T.Response)) is not gob.NEED_MORE:
        assert dec.next_value(None) is not gob.NEED_MORE
    assert dec.buffered == 0


def run_server(data, sizes):
    sent = []
    server = RPCServerConnection(pty_like_methods(), sent.append, max_message=CAP)
    with only(ProtocolError):
        for chunk in chunked(data, sizes):
            server.data_received(chunk)
            assert server.outstanding <= MAX_OUTSTANDING
            assert server._dec.buffered < CAP + 9
    check_replies(sent)


@fuzz(200)
@given(st.binary(max_size=2000), chunk_sizes)
def test_rpc_server_random_bytes(data, sizes):
    run_server(data, sizes)


@fuzz(150)
@given(st.sampled_from(CLIENT_STREAMS), edits, chunk_sizes)
def test_rpc_server_mutated_reference_calls(stream, changes, sizes):
    run_server(mutate(stream, changes), sizes)


names = st.sampled_from(sorted(pty_like_methods()) + ["pty.Nope", "nope.Nope", "", "pty", ".", "a.b.c"])


@fuzz(100)
@given(st.lists(st.tuples(names, st.sampled_from(GO_TYPES).flatmap(lambda t: st.tuples(st.just(t), values_of(t)))),
                min_size=1, max_size=6), chunk_sizes)
# a call whose argument is of another type than the method takes: GobError, the connection drops
@example([("pty.Write", (T.INT, 5))], [])
def test_rpc_server_calls_with_any_argument_type(calls, sizes):
    client = RPCClientConnection()
    wire = b"".join(client.start_call(name, value, t, T.EMPTY)[1] for name, (t, value) in calls)
    run_server(wire, sizes)


def run_client(data, sizes, calls):
    client = RPCClientConnection(max_message=CAP)
    started = {client.start_call(name, T.EMPTY.cls(), T.EMPTY, reply)[0]: reply for name, reply in calls}
    finished = []
    with only(ProtocolError):
        for chunk in chunked(data, sizes):
            for seq, value in client.data_received(chunk):
                assert seq in started and seq not in finished
                finished.append(seq)
                assert isinstance(value, (RPCError, PYTHON_TYPE[started[seq]]))
            assert client._dec.buffered < CAP + 9
        # (after a ProtocolError the connection is dropped and every waiting call fails)
        assert client.pending == len(started) - len(finished)


PYTHON_TYPE = {T.EMPTY: T.EMPTY.cls, T.BYTES: bytes, T.INT: int}
reference_calls = [("pty.Start", T.EMPTY), ("pty.Read", T.BYTES), ("pty.Write", T.INT), ("pty.SetPtySize", T.EMPTY),
                   ("pty.Read", T.BYTES), ("pty.Read", T.BYTES), ("pty.Stop", T.EMPTY)]


@fuzz(200)
@given(st.binary(max_size=2000), chunk_sizes, st.integers(0, len(reference_calls)))
def test_rpc_client_random_bytes(data, sizes, ncalls):
    run_client(data, sizes, reference_calls[:ncalls])


@fuzz(150)
@given(st.sampled_from(SERVER_STREAMS), edits, chunk_sizes)
def test_rpc_client_mutated_reference_replies(stream, changes, sizes):
    run_client(mutate(stream, changes), sizes, reference_calls)


def echo_methods():
    methods = {f"echo.T{i}": Method(t, t, lambda v: v) for i, t in enumerate(GO_TYPES)}
    methods["fail.Now"] = Method(T.STRING, T.EMPTY, lambda text: defer.fail(RPCError(text)))
    return methods


@fuzz(100)
@given(st.lists(st.one_of(
    st.integers(0, len(GO_TYPES) - 1).flatmap(lambda i: st.tuples(st.just(i), values_of(GO_TYPES[i]))),
    st.tuples(st.just(-1), st.text(min_size=1, max_size=30))), min_size=1, max_size=5), chunk_sizes)
def test_rpc_round_trip(calls, sizes):
    client = RPCClientConnection()
    replies = []
    server = RPCServerConnection(echo_methods(), replies.append)
    expected, got = {}, {}
    for i, value in calls:
        if i < 0:
            seq, wire = client.start_call("fail.Now", value, T.STRING, T.EMPTY)
        else:
            t = GO_TYPES[i]
            seq, wire = client.start_call(f"echo.T{i}", value, t, t)
        expected[seq] = (i, value)
        for chunk in chunked(wire, sizes):
            server.data_received(chunk)
    for chunk in chunked(b"".join(replies), sizes):
        got.update(client.data_received(chunk))
    assert got.keys() == expected.keys() and client.pending == 0
    for seq, (i, value) in expected.items():
        if i < 0:
            assert isinstance(got[seq], RPCError) and str(got[seq]) == value
        else:
            assert got[seq] == value

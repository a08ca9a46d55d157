"""gob streams recorded from real programs built with a current Go (>= 1.21:
type ids from 64): the dmsgpty-cli and dmsgpty-host of skycoin/dmsg v1.3.28,
and the app server of a skywire v1.3.28 visor (tests/vectors/gob_go121.json,
its header says how they were recorded).

For every recorded connection: each direction decodes, re-encodes with
skypty's encoder byte for byte (a fresh Go process numbers as a fresh Encoder
does; a long-running one as a shared gob.TypeRegistry does), decodes to the
values that were sent, and skypty's net/rpc cores reproduce both sides: the
server core, given the Go server's answers in the Go server's order, writes
the Go server's bytes (including Go's own "can't find method" texts), and the
client core writes the client's bytes and reads the server's replies.
"""

import pytest
from twisted.internet import defer

from skypty.keys import PublicKey
from skypty.visor import types as V
from skypty.wire import gob, types as T
from skypty.wire.rpc import Method, RPCClientConnection, RPCError, RPCServerConnection
from tests.test_gob import decode_all
from tests.vectors import load

VEC = load("gob_go121.json")
SCENARIOS = VEC["scenarios"]
HOST_ORDER = VEC["order"]  # the dmsgpty-host process served these, in this order

# method -> (argument, reply) as each side declares them
GO_HOST = {  # the v1.3.28 gateways: what a Go dmsgpty-host serves
    "pty.Start": (T.CommandReqV1, T.EMPTY), "pty.Read": (T.INT, T.BYTES), "pty.Write": (T.BYTES, T.INT),
    "pty.SetPtySize": (T.WinSize, T.EMPTY), "pty.Stop": (T.EMPTY, T.EMPTY),
    "whitelist.Whitelist": (T.EMPTY, T.PubKeys), "whitelist.WhitelistAdd": (T.PubKeys, T.EMPTY),
    "whitelist.WhitelistRemove": (T.PubKeys, T.EMPTY),
}
SKYPTY_CLIENT = dict(GO_HOST, **{  # what skypty-client sends (CommandReq with Env); replies here are errors
    "pty.Start": (T.CommandReq, T.EMPTY), "pty.StartSession": (T.CommandReq, T.EMPTY),
    "pty.ExitStatus": (T.EMPTY, T.INT), "pty.Sessions": (T.EMPTY, T.SessionList),
    "host.Peers": (T.EMPTY, T.EMPTY), "whitelist.Sources": (T.EMPTY, T.WhitelistEntries),
})


def tables(name):
    """-> (client's method table, server's), keyed by the bare method name."""
    sc = SCENARIOS[name]
    if "proc_key" in sc:
        return V.METHODS, V.METHODS
    return (GO_HOST if sc["client"].startswith("Go") else SKYPTY_CLIENT), GO_HOST


def bare(sc, service_method):
    key = sc.get("proc_key")
    return service_method[len(key) + 1:] if key and service_method.startswith(key + ".") else service_method


def stream(name, direction):
    return bytes.fromhex(SCENARIOS[name][direction]["stream"])


def calls(name):
    """The client's calls: [(Request, argument value)], typed."""
    sc, (client, _) = SCENARIOS[name], tables(name)
    values = decode_all(stream(name, "client_to_server"))
    out = []
    for head, body in zip(values[::2], values[1::2]):
        request = gob.convert(head, T.Request)
        out.append((request, gob.convert(body, client[bare(sc, request.service_method)][0])))
    return out


def replies(name):
    """The server's replies: [(Response, value or None when Error is set)], typed."""
    sc, (_, server) = SCENARIOS[name], tables(name)
    values = decode_all(stream(name, "server_to_client"))
    out = []
    for head, body in zip(values[::2], values[1::2]):
        response = gob.convert(head, T.Response)
        if response.error:
            assert gob.convert(body, T.EMPTY) == T.EMPTY.cls()
            out.append((response, None))
        else:
            out.append((response, gob.convert(body, server[bare(sc, response.service_method)][1])))
    return out


KNOWN_TYPES = {"PubKey": T.PubKey}


def server_registry(name):
    """The Go server process's type table as it stood when *name* began: the
    visor's ids taken by other traffic, or the dmsgpty-host's earlier streams."""
    sc = SCENARIOS[name]
    before = sc.get("server_ids_before", {"taken": [], "known": {}})
    registry = gob.TypeRegistry(taken=set(before["taken"]) | {int(i) for i in before["known"]})
    for tid, type_name in before["known"].items():
        registry.ids[KNOWN_TYPES[type_name]], registry.names[KNOWN_TYPES[type_name]] = int(tid), type_name
    if sc["process"] == "go-dmsgpty-host":
        for earlier in HOST_ORDER[:HOST_ORDER.index(name)]:
            encode_replies(earlier, registry)
    return registry


def encode_calls(name, registry=None):
    sc, (client, _) = SCENARIOS[name], tables(name)
    enc, out = gob.Encoder(registry=registry), []
    for request, arg in calls(name):
        out.append(enc.encode(request, T.Request) + enc.encode(arg, client[bare(sc, request.service_method)][0]))
    return out


def encode_replies(name, registry):
    sc, (_, server) = SCENARIOS[name], tables(name)
    enc, out = gob.Encoder(registry=registry), []
    for response, value in replies(name):
        head = enc.encode(response, T.Response)  # first: ids follow the order of use
        body = (enc.encode(T.EMPTY.cls(), T.EMPTY) if response.error
                else enc.encode(value, server[bare(sc, response.service_method)][1]))
        out.append(head + body)
    return out


def messages(name, direction):
    return [bytes.fromhex(m) for m in SCENARIOS[name][direction]["messages"]]


ALL = sorted(SCENARIOS)


def test_the_vectors_come_from_current_go_builds():
    programs = VEC["programs"]
    assert programs["go"].startswith("go1.") and int(programs["go"].split(".")[1]) >= 21
    for name in ALL:
        for direction in ("client_to_server", "server_to_client"):
            first = messages(name, direction)[0]
            assert first[1] == 0x7F, (name, direction)  # -64: the first definition is type 64
    assert set(HOST_ORDER) == {n for n in ALL if SCENARIOS[n]["process"] == "go-dmsgpty-host"}


@pytest.mark.parametrize("name", ALL)
def test_each_direction_reencodes_byte_for_byte(name):
    sent = encode_calls(name)  # every client here is a fresh process
    assert b"".join(sent).hex() == stream(name, "client_to_server").hex()
    answered = encode_replies(name, server_registry(name))
    assert b"".join(answered).hex() == stream(name, "server_to_client").hex()
    # ... and cut into the same gob messages
    for direction, encoded in (("client_to_server", sent), ("server_to_client", answered)):
        cut, pos, data = [], 0, b"".join(encoded)
        for m in messages(name, direction):
            cut.append(data[pos:pos + len(m)])
            pos += len(m)
        assert cut == messages(name, direction)


def test_a_fresh_registry_cannot_reproduce_a_long_running_go_server():
    # What the registry is for: the Go host's later streams reuse ids of earlier ones.
    fresh = b"".join(encode_replies("cli_whitelist", gob.TypeRegistry()))
    assert fresh != stream("cli_whitelist", "server_to_client")
    assert b"".join(encode_replies("cli_whitelist", server_registry("cli_whitelist"))) == \
        stream("cli_whitelist", "server_to_client")


def test_the_decoded_values_are_what_the_programs_sent():
    (start, start_arg), *rest = calls("cli_pty")
    assert (start.service_method, start_arg.name, start_arg.arg, start_arg.size) == ("pty.Start", "/bin/sh", [], None)
    writes = [arg for req, arg in rest if req.service_method == "pty.Write"]
    assert writes == [b"echo hi-from-go-cli\nexit\n"]
    assert {arg for req, arg in rest if req.service_method == "pty.Read"} == {32768}
    answers = replies("cli_pty")
    assert (answers[-1][0].seq, answers[-1][0].error) == (5, "read /dev/ptmx: input/output error")
    assert [v for r, v in answers if r.service_method == "pty.Write"] == [25]
    assert b"hi-from-go-cli\r\n" in b"".join(v for r, v in answers if r.service_method == "pty.Read" and v)

    (_, keys), = [(r, v) for r, v in replies("cli_whitelist_two")]
    assert len(keys) == 2 and all(isinstance(k, PublicKey) for k in keys)
    (added,) = [arg for _, arg in calls("cli_whitelist_add")]
    (refusal, _), = replies("cli_whitelist_add_present")
    assert refusal.error == f"skipping append for {added[0].raw.hex()}. Already exists"
    assert [r.error for r, _ in replies("cli_whitelist_remove_absent")] == [""]  # the Go host says nothing

    errors = {r.service_method: r.error for r, _ in replies("skypty_start_local") if r.error}
    assert errors == {"pty.StartSession": "rpc: can't find method pty.StartSession",
                      "pty.Read": "read /dev/ptmx: input/output error",
                      "pty.ExitStatus": "rpc: can't find method pty.ExitStatus"}
    assert replies("skypty_list")[0][0].error == "rpc: can't find service host.Peers"
    assert replies("skypty_list_sessions")[0][0].error == "rpc: can't find method pty.Sessions"

    refused = {bare(SCENARIOS["visor_listen_refused"], r.service_method): r.error
               for r, _ in replies("visor_listen_refused") if r.error}
    assert refused == {"Listen": "dmsg error 400 - port already occupied", "Accept": "listening on closed connection"}

    sc = SCENARIOS["visor_session"]
    got = [(bare(sc, r.service_method), r, v) for r, v in replies("visor_session")]
    accepted = [v.remote for m, r, v in got if m == "Accept" and not r.error]
    assert sorted(a.net for a in accepted) == ["dmsg", "skynet"] and all(a.port for a in accepted)
    dials = [v for m, r, v in got if m == "Dial" and not r.error]
    assert [d.local_port >= 49152 for d in dials] == [True, True]
    eofs = [v.err for m, r, v in got if m == "Read" and v is not None and v.err is not None and v.err.text == "EOF"]
    assert eofs and all(e.is_net_err for e in eofs)  # the visor flags a peer's EOF as a net.Error
    assert {r.error for m, r, v in got if m == "Dial" and r.error} == {
        "maximum retries attempted without success", "dmsg error 100 - entry is not found in discovery"}
    status = [arg for req, arg in calls("visor_session") if req.service_method.endswith(".SetDetailedStatus")]
    assert status == [V.STATUS_RUNNING]


@pytest.mark.parametrize("name", ALL)
def test_skyptys_server_core_answers_as_the_go_server_did(name):
    """Fed the client's calls as they arrived, and given each answer when the
    Go server gave it, the server core writes the Go server's exact bytes;
    methods the Go server lacks are answered by the core itself, with Go's text."""
    sc, (_, server) = SCENARIOS[name], tables(name)
    prefix = sc["proc_key"] + "." if "proc_key" in sc else ""
    out, waiting = [], []
    methods = {prefix + method: Method(arg, reply, lambda _arg: waiting.append(defer.Deferred()) or waiting[-1])
               for method, (arg, reply) in server.items()}
    core = RPCServerConnection(methods, out.append, registry=server_registry(name))
    chunks = [b"".join(messages_of_call) for messages_of_call in _calls_as_sent(name)]
    seqs = [request.seq for request, _ in calls(name)]
    pending, fed = {}, 0
    for response, value in replies(name):
        while fed <= seqs.index(response.seq):  # the call has arrived by the time it is answered
            before = len(waiting)
            core.data_received(chunks[fed])
            if len(waiting) > before:
                pending[seqs[fed]] = waiting[-1]
            fed += 1
        d = pending.pop(response.seq, None)
        if d is None:
            continue  # answered by the core at once (an unknown method)
        if response.error:
            d.errback(RPCError(response.error))
        else:
            d.callback(value)
    assert not pending
    assert b"".join(out).hex() == stream(name, "server_to_client").hex()


def _calls_as_sent(name):
    """The client stream cut per call: its definitions, header and body messages."""
    groups, current, values = [], [], 0
    for m in messages(name, "client_to_server"):
        current.append(m)
        r = gob._Reader(m)
        r.uint()  # the message's length
        if r.int() > 0:  # a value (a definition's id is negative)
            values += 1
            if values % 2 == 0:
                groups.append(current)
                current = []
    assert not current
    return groups


@pytest.mark.parametrize("name", ALL)
def test_skyptys_client_core_sends_and_reads_as_recorded(name):
    sc, (client, _) = SCENARIOS[name], tables(name)
    core, sent = RPCClientConnection(), []
    for request, arg in calls(name):
        arg_type, reply_type = client[bare(sc, request.service_method)]
        seq, data = core.start_call(request.service_method, arg, arg_type, reply_type)
        assert seq == request.seq
        sent.append(data)
    assert b"".join(sent).hex() == stream(name, "client_to_server").hex()
    done = dict(core.data_received(stream(name, "server_to_client")))
    for response, value in replies(name):
        got = done.pop(response.seq)
        if response.error:
            assert isinstance(got, RPCError) and str(got) == response.error
        else:
            assert got == value
    assert not done and core.pending == 0

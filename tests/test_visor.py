"""skypty as a Skywire visor app (issue #18).

Against tests/appserver_double.py, an app server that follows the 2024
reference on the wire (its own gob declarations, a real TCP socket, the
hello, method names under the proc key): the launch contract and the hello
byte for byte, the appnet transport (back-pressure, EOF, close), the
MultiDialer's policy on a Clock, and ``skypty-visor-app`` as a real process:
it listens on skynet and dmsg port 22, a whitelisted route peer gets a shell
and an exec with its exit code, a stranger gets nothing spawned, dialling a
peer goes skynet first and falls back to dmsg, ``--scheme`` pins each, and
SIGINT stops it cleanly.
"""

import json
import os
import shutil
import sys
import tempfile
import time

import pytest
from twisted.internet import defer, error, protocol, reactor, task, utils
from twisted.trial import unittest

from skypty.dmsg.errors import DialError, NotWhitelisted
from skypty.keys import generate_keypair
from skypty.visor import types as V
from skypty.visor.appclient import AppServerClient, AppServerProtocol
from skypty.visor.appnet import WRITE_CHUNK, AppNetClientEndpoint, AppNetServerEndpoint
from skypty.visor.dialer import (
    NO_VISOR, AllTransportsFailed, AttemptTimedOut, MultiDialer, SchemeUnavailable, Transport, UnknownScheme,
)
from skypty.visor.procconfig import ProcConfigError, encode_hello, parse_proc_config
from skypty.wire import gob, requestline, types as T
from skypty.wire.rpc import RPCClientProtocol
from tests.appserver_double import AppServerDouble
from tests.hosts import env

# What the `skypty-visor-app` console script runs, from this checkout (the
# tests need no installed skypty; scripts/install-test-deps installs none).
VISOR_APP = [sys.executable, "-m", "skypty.visorapp"]
CLIENT = [sys.executable, "-m", "skypty.client.main"]
PK_HEX = "02" + "11" * 32  # not checked as a point here: only parsing


@defer.inlineCallbacks
def until(predicate, timeout=20.0, what="the condition"):
    """Poll on the reactor (no sleeping) until predicate() is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield task.deferLater(reactor, 0.02, lambda: None)


# -- PROC_CONFIG and the hello, byte for byte -------------------------------------------

def go_proc_config(**changes):
    """PROC_CONFIG as the 2024 launcher writes it (json.Marshal of appcommon.ProcConfig)."""
    pk, _ = generate_keypair()
    fields = {"app_name": "skypty", "app_server_addr": "localhost:5505", "proc_key": "0f" * 16,
              "proc_args": ["--config", "/etc/skypty.json"], "proc_envs": None,
              "proc_work_dir": "/opt/skywire/local/skypty", "visor_pk": pk.hex(), "routing_port": 22,
              "binary_loc": "/opt/skywire/apps/skypty", "log_db_loc": "/opt/skywire/local/skypty_log.db",
              "log_store_path": ""}
    fields.update(changes)
    return json.dumps(fields, separators=(",", ":")), pk


def test_proc_config_as_a_visor_writes_it():
    text, pk = go_proc_config()
    pc = parse_proc_config(text)
    assert (pc.app_server_host, pc.app_server_port) == ("127.0.0.1", 5505)
    assert pc.proc_key == "0f" * 16 and pc.visor_pk == pk and pc.routing_port == 22
    assert pc.proc_args == ("--config", "/etc/skypty.json")


@pytest.mark.parametrize("changes, field", [
    ({"proc_key": "abc"}, "proc_key"),
    ({"proc_key": "00" * 16}, "proc_key"),
    ({"proc_key": None}, "proc_key"),
    ({"visor_pk": "zz"}, "visor_pk"),
    ({"visor_pk": "00" * 33}, "visor_pk"),
    ({"app_server_addr": "localhost"}, "app_server_addr"),
    ({"app_server_addr": 5505}, "app_server_addr"),
    ({"routing_port": 70000}, "routing_port"),
    ({"proc_args": [1]}, "proc_args"),
])
def test_proc_config_errors_name_the_field(changes, field):
    text, _ = go_proc_config(**changes)
    with pytest.raises(ProcConfigError) as e:
        parse_proc_config(text)
    assert f"PROC_CONFIG.{field}" in str(e.value) and "\n" not in str(e.value)


def test_missing_or_garbage_proc_config_is_one_line():
    for text in (None, "", "{", "[]", "x" * 70000):
        with pytest.raises(ProcConfigError) as e:
            parse_proc_config(text)
        assert "PROC_CONFIG" in str(e.value) and "\n" not in str(e.value)


def test_hello_bytes():
    # appcommon.WriteHello: u16 BE length, then json.Marshal(Hello{ProcKey}) (omitempty for the rest)
    key = "00112233445566778899aabbccddeeff"
    body = b'{"proc_key":"00112233445566778899aabbccddeeff"}'
    assert encode_hello(key) == b"\x00\x2f" + body and len(body) == 0x2f


def test_listen_call_bytes_follow_gob():
    """An appnet.Addr argument, as a fresh Go >= 1.21 process encodes it after
    net/rpc's Request (type ids 64, 65, 66), derived by hand from the gob rules."""
    pk, _ = generate_keypair()
    enc = gob.Encoder()
    enc.encode(T.Request.cls(service_method="k.Listen", seq=0), T.Request)  # Request takes id 64
    got = enc.encode(V.Addr.cls(net="skynet", pub_key=pk, port=22), V.Addr)

    def frame(body):
        return gob.encode_uint(len(body)) + body

    addr_def = (b"\xff\x81"                                   # -65: a definition of type 65
                b"\x03"                                       # wireType.StructT
                b"\x01\x01\x04Addr\x01\xff\x82\x00"           # CommonType{Name "Addr", Id 65}
                b"\x01\x03"                                   # three fields
                b"\x01\x03Net\x01\x0c\x00"                    # Net: string (6)
                b"\x01\x06PubKey\x01\xff\x84\x00"             # PubKey: type 66
                b"\x01\x04Port\x01\x06\x00"                   # Port: uint (3)
                b"\x00\x00")
    pubkey_def = (b"\xff\x83"                                 # -66
                  b"\x06"                                     # wireType.BinaryMarshalerT
                  b"\x01\x01\x06PubKey\x01\xff\x84\x00"       # CommonType{Name "PubKey", Id 66}
                  b"\x00\x00")
    value = b"\xff\x82" + b"\x01\x06skynet" + b"\x01\x21" + pk.raw + b"\x01\x16" + b"\x00"
    assert got == frame(addr_def) + frame(pubkey_def) + frame(value)


def test_read_reply_decodes_from_go_bytes():
    """ReadResp{B, N, Err *RPCIOErr} with Err set, hand-encoded as Go sends it."""
    def frame(body):
        return gob.encode_uint(len(body)) + body

    ioerr_def = (b"\xff\x81\x03\x01\x01\x08RPCIOErr\x01\xff\x82\x00\x01\x04"
                 b"\x01\x04Text\x01\x0c\x00\x01\x08IsNetErr\x01\x02\x00"
                 b"\x01\x0cIsTimeoutErr\x01\x02\x00\x01\x0eIsTemporaryErr\x01\x02\x00\x00\x00")
    resp_def = (b"\xff\x83\x03\x01\x01\x08ReadResp\x01\xff\x84\x00\x01\x03"
                b"\x01\x01B\x01\x0a\x00\x01\x01N\x01\x04\x00\x01\x03Err\x01\xff\x82\x00\x00\x00")
    value = b"\xff\x84\x01\x02hi\x01\x04\x01\x01\x03EOF\x00\x00"  # B "hi", N 2, Err{Text "EOF"}
    dec = gob.Decoder()
    dec.feed(frame(resp_def) + frame(ioerr_def) + frame(value))
    resp = dec.next_value(V.ReadResp)
    assert (resp.b, resp.n, resp.err.text, resp.err.is_net_err) == (b"hi", 2, "EOF", False)


# -- MultiDialer: pure policy on a Clock ------------------------------------------------

class FakeProto:
    def __init__(self):
        self.transport = self
        self.aborted = False
        self.accepted = defer.Deferred()

    def abortConnection(self):
        self.aborted = True


def scripted(outcomes, log, name):
    """A dial that plays *outcomes* in turn: a Deferred (pending), an exception, or 'ok'."""
    def dial(pk, port, make_protocol):
        log.append(name)
        outcome = outcomes.pop(0)
        if isinstance(outcome, defer.Deferred):
            return outcome
        if isinstance(outcome, Exception):
            return defer.fail(outcome)
        proto = make_protocol()
        proto.accepted.callback(proto)
        return defer.succeed(proto)
    return dial


def dialer(clock, skynet, dmsg, log):
    return MultiDialer(clock, [Transport("skynet", scripted(skynet, log, "skynet"), 5.0),
                               Transport("dmsg", scripted(dmsg, log, "dmsg"), 30.0)])


def run(d):
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def test_skynet_first():
    clock, log = task.Clock(), []
    pk, _ = generate_keypair()
    proto = run(dialer(clock, ["ok"], ["ok"], log).dial(pk, 22, FakeProto, ready=lambda p: p.accepted))
    assert isinstance(proto, FakeProto) and log == ["skynet"]


def test_falls_back_to_dmsg_and_joins_both_errors():
    clock, log = task.Clock(), []
    pk, _ = generate_keypair()
    proto = run(dialer(clock, [DialError("no route")], ["ok"], log).dial(pk, 22, FakeProto))
    assert isinstance(proto, FakeProto) and log == ["skynet", "dmsg"]
    failure = run(dialer(clock, [DialError("no route")], [DialError(f"{pk.hex()} is offline")], log)
                  .dial(pk, 22, FakeProto))
    assert failure.check(AllTransportsFailed)
    text = str(failure.value)
    assert text == f"skynet: no route; dmsg: {pk.hex()[:8]}… is offline", text


def test_each_attempt_is_bounded():
    clock, log = task.Clock(), []
    pk, _ = generate_keypair()
    hanging = defer.Deferred()
    d = dialer(clock, [hanging], ["ok"], log).dial(pk, 22, FakeProto)
    clock.advance(4.9)
    assert log == ["skynet"] and not d.called
    clock.advance(0.2)
    assert isinstance(run(d), FakeProto) and log == ["skynet", "dmsg"]
    # an answer that never comes is bounded too, and the half-open stream is dropped
    silent = FakeProto()
    d = MultiDialer(clock, [Transport("skynet", lambda pk, port, mk: defer.succeed(silent), 5.0)]).dial(
        pk, 22, FakeProto, ready=lambda p: p.accepted)
    clock.advance(5.1)
    assert run(d).check(AttemptTimedOut) and silent.aborted


def test_a_refusal_is_final():
    clock, log = task.Clock(), []
    pk, _ = generate_keypair()
    refused = FakeProto()

    def dial(pk, port, make_protocol):
        log.append("skynet")
        refused.accepted.errback(NotWhitelisted("host does not whitelist us"))
        return defer.succeed(refused)

    d = MultiDialer(clock, [Transport("skynet", dial, 5.0), Transport("dmsg", scripted(["ok"], log, "dmsg"), 5.0)])
    assert run(d.dial(pk, 22, FakeProto, ready=lambda p: p.accepted)).check(NotWhitelisted)
    assert log == ["skynet"]


def test_scheme_pins_one_and_names_what_is_missing():
    clock, log = task.Clock(), []
    pk, _ = generate_keypair()
    assert isinstance(run(dialer(clock, [], ["ok"], log).dial(pk, 22, FakeProto, scheme="dmsg")), FakeProto)
    assert isinstance(run(dialer(clock, ["ok"], [], log).dial(pk, 22, FakeProto, scheme="skynet")), FakeProto)
    assert log == ["dmsg", "skynet"]
    failure = run(dialer(clock, [DialError("no route")], ["ok"], log).dial(pk, 22, FakeProto, scheme="skynet"))
    assert str(failure.value) == "no route" and log[-1] == "skynet"
    alone = MultiDialer(clock, [Transport("dmsg", scripted(["ok"], log, "dmsg"), 5.0)], {"skynet": NO_VISOR})
    failure = run(alone.dial(pk, 22, FakeProto, scheme="skynet"))
    assert failure.check(SchemeUnavailable) and "not running under a Skywire visor" in str(failure.value)
    assert run(alone.dial(pk, 22, FakeProto, scheme="carrier-pigeon")).check(UnknownScheme)


# -- the app server client and appnet transports, in process ------------------------------

class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class Collector(protocol.Protocol):
    def __init__(self, expect=None):
        self.data = bytearray()
        self.expect = expect
        self.done = defer.Deferred()
        self.reason = None

    def dataReceived(self, data):
        self.data += data
        if self.expect is not None and len(self.data) >= self.expect and not self.done.called:
            self.done.callback(bytes(self.data))

    def connectionLost(self, reason=protocol.connectionDone):
        self.reason = reason
        if not self.done.called:
            self.done.callback(bytes(self.data))


class AppNetTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.double = AppServerDouble(reactor)
        self.double.start()
        self.addCleanup(self.double.stop)
        self.visor_pk, _ = generate_keypair()
        self.client = yield self.connect(self.visor_pk)

    @defer.inlineCallbacks
    def connect(self, visor_pk, name="app"):
        pc = parse_proc_config(self.double.add_proc(visor_pk, name))
        proto = AppServerProtocol(pc.proc_key)
        yield protocol.ClientCreator(reactor, lambda: proto).connectTCP(pc.app_server_host, pc.app_server_port)
        client = AppServerClient(pc, proto)
        self.addCleanup(lambda: client.disconnect() if not client.closed else None)
        return client

    @defer.inlineCallbacks
    def test_hello_then_rpc_under_the_proc_key(self):
        yield self.client.set_detailed_status(V.STATUS_RUNNING)
        proc = self.double.proc_named("app")
        assert proc.hello_raw == encode_hello(proc.key) and proc.statuses == ["Running"]

    @defer.inlineCallbacks
    def test_the_double_numbers_types_as_one_go_process(self):
        # As the real visor (tests/vectors/gob_go121.json): ids from 64, drawn
        # from one table for every app, so a later app's stream skips the ids
        # an earlier one's types took.
        peer_pk, _ = generate_keypair()
        self.double.peer_listen("skynet", peer_pk, 7, protocol.Factory.forProtocol(Echo))
        yield AppNetClientEndpoint(self.client, "skynet", peer_pk, 7).connect(protocol.Factory.forProtocol(Collector))
        other = yield self.connect(self.visor_pk, "other")
        yield other.set_detailed_status(V.STATUS_RUNNING)
        first = {w.name: tid for tid, w in self.client.proto.rpc.core._dec._wire.items()}
        second = {w.name: tid for tid, w in other.proto.rpc.core._dec._wire.items()}
        assert first["Response"] == second["Response"] == 64 and first["DialResp"] == 65
        assert second[""] not in first.values()  # struct{}: a fresh table would have reused 65

    @defer.inlineCallbacks
    def test_an_unknown_proc_key_is_dropped(self):
        pc = parse_proc_config(self.double.add_proc(self.visor_pk, "other"))
        proto = AppServerProtocol("ab" * 16)
        yield protocol.ClientCreator(reactor, lambda: proto).connectTCP(pc.app_server_host, pc.app_server_port)
        client = AppServerClient(pc, proto)
        yield client.when_lost()
        assert client.closed and self.double.rejected_hellos

    @defer.inlineCallbacks
    def test_dial_round_trip_with_back_pressure(self):
        peer_pk, _ = generate_keypair()
        self.double.peer_listen("skynet", peer_pk, 7, protocol.Factory.forProtocol(Echo))
        blob = os.urandom(3 * 1024 * 1024 + 17)  # past every high-water mark on the way
        collector = Collector(expect=len(blob))
        proto = yield AppNetClientEndpoint(self.client, "skynet", peer_pk, 7).connect(
            protocol.Factory.forProtocol(lambda: collector))
        proto.transport.write(blob)
        echoed = yield collector.done
        assert echoed == blob
        assert proto.transport.getPeerPK() == peer_pk
        proc = self.double.proc_named("app")
        assert proc.calls.count("Write") >= len(blob) // WRITE_CHUNK
        proto.transport.loseConnection()
        yield until(lambda: "CloseConn" in proc.calls and not proc.conns, what="CloseConn")

    @defer.inlineCallbacks
    def test_dial_failure_is_the_visors_words(self):
        peer_pk, _ = generate_keypair()
        self.double.failing["skynet"] = "route finder: no routes to the destination"
        with pytest.raises(DialError) as e:
            yield AppNetClientEndpoint(self.client, "skynet", peer_pk, 22).connect(
                protocol.Factory.forProtocol(Collector))
        assert "no routes to the destination" in str(e.value)

    @defer.inlineCallbacks
    def test_listen_accept_eof_and_close(self):
        served = []

        def make():
            served.append(Collector())
            return served[-1]

        port = yield AppNetServerEndpoint(reactor, self.client, "skynet", 22).listen(
            protocol.Factory.forProtocol(make))
        peer_pk, _ = generate_keypair()
        peer = Collector()
        self.double.peer_dial("skynet", peer_pk, self.visor_pk, 22, peer)
        yield until(lambda: served, what="an accepted connection")
        conn = served[0]
        assert conn.transport.getPeerPK() == peer_pk and conn.transport.getPeer().net == "skynet"
        peer.transport.write(b"hello")
        yield until(lambda: bytes(conn.data) == b"hello", what="bytes over the route")
        conn.transport.write(b"back")
        yield until(lambda: bytes(peer.data) == b"back", what="bytes back")
        peer.transport.loseConnection()  # the route peer hangs up: EOF on Read
        yield until(lambda: conn.reason is not None, what="EOF")
        assert conn.reason.check(error.ConnectionDone)
        # the app's side closes: the peer sees it
        second = Collector()
        self.double.peer_dial("skynet", peer_pk, self.visor_pk, 22, second)
        yield until(lambda: len(served) == 2, what="a second connection")
        served[1].transport.loseConnection()
        yield until(lambda: second.reason is not None, what="the close at the peer")
        yield port.stopListening()
        proc = self.double.proc_named("app")
        assert "CloseListener" in proc.calls and not proc.listeners

    @defer.inlineCallbacks
    def test_the_visor_going_ends_every_connection(self):
        port = yield AppNetServerEndpoint(reactor, self.client, "dmsg", 22).listen(
            protocol.Factory.forProtocol(Collector))
        peer_pk, _ = generate_keypair()
        peer = Collector()
        self.double.peer_dial("dmsg", peer_pk, self.visor_pk, 22, peer)
        yield until(lambda: port.conns, what="an accepted connection")
        conn = next(iter(port.conns))
        conn.pauseProducing()  # no Read in flight: it must still learn that the visor went
        self.double.proc_named("app").session.transport.loseConnection()
        yield self.client.when_lost()
        assert conn.disconnected and conn.protocol.reason.check(error.ConnectionLost)


# -- skypty-visor-app, a real process --------------------------------------------------

class AppProcess(protocol.ProcessProtocol):
    def __init__(self):
        self.output = []
        self.ended = defer.Deferred()
        self.exit_code = None

    def outReceived(self, data):
        self.output.append(data.decode(errors="replace"))

    errReceived = outReceived

    def processEnded(self, reason):
        self.exit_code = reason.value.exitCode
        self.ended.callback(self.exit_code)

    def log(self):
        return "".join(self.output)


def children_of(pid):
    from tests.procutil import children_of as with_states

    return [child for child, _state in with_states(pid)]


class VisorApp:
    """One skypty-visor-app launched as a visor would, against the double."""

    def __init__(self, testcase, double, name, whitelist=()):
        self.double = double
        self.name = name
        self.pk, _ = generate_keypair()
        self.dir = tempfile.mkdtemp(prefix=f"skypty-visor-{name}-")  # short: a unix socket lives here
        testcase.addCleanup(shutil.rmtree, self.dir, True)
        self.cli = os.path.join(self.dir, "pty.sock")
        self.config_path = os.path.join(self.dir, "pty-config.json")
        with open(self.config_path, "w") as f:  # no sk, no pk: under a visor the host is the visor
            json.dump({"dmsg": {"discovery": "http://127.0.0.1:9"},
                       "pty": {"dmsg_port": 22, "cli_network": "unix", "cli_address": self.cli,
                               "whitelist": [pk.hex() for pk in whitelist], "ssh_listen": ":2022"}}, f)
        self.process = AppProcess()
        self.transport = None

    def proc(self):
        return self.double.proc_named(self.name)

    @defer.inlineCallbacks
    def start(self):
        proc_config = self.double.add_proc(self.pk, self.name, args=["--config", self.config_path],
                                           work_dir=self.dir)
        environment = dict(env(), PROC_CONFIG=proc_config)
        # as the launcher does: the program itself, no shell, args from launcher.apps
        self.transport = reactor.spawnProcess(self.process, VISOR_APP[0],
                                              VISOR_APP + ["--config", self.config_path],
                                              env=environment, path=self.dir)
        try:
            yield until(lambda: "Running" in self.proc().statuses or self.process.exit_code is not None,
                        what=f"{self.name} to report Running")
        except AssertionError:
            raise AssertionError(f"{self.name} did not start: {self.process.log()}") from None
        assert self.process.exit_code is None, self.process.log()
        return self

    @defer.inlineCallbacks
    def stop(self):
        if self.process.exit_code is None:
            self.transport.signalProcess("INT")
            try:
                yield self.process.ended.addTimeout(15, reactor)
            except defer.TimeoutError:
                self.transport.signalProcess("KILL")
                yield self.process.ended

    def client(self, *args):
        """skypty-client through this app's control socket -> Deferred[(out, err, code)]."""
        verb, rest = args[0], list(args[1:])
        return utils.getProcessOutputAndValue(CLIENT[0], CLIENT[1:] + [verb, "--cliaddr", self.cli] + rest,
                                              env=env(), path=self.dir)


class RoutePeer(protocol.Protocol):
    """A peer on the other end of a route: request line, answer byte, then net/rpc."""

    def __init__(self, uri=requestline.PTY, pipeline=b""):
        self.uri = uri
        self.pipeline = pipeline
        self.answer = defer.Deferred()
        self.rpc = RPCClientProtocol()
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.transport.write(requestline.encode_request(self.uri) + self.pipeline)

    def dataReceived(self, data):
        if not self.answer.called:
            if data[:1] == requestline.ACCEPT:
                self.rpc.makeConnection(self.transport)
            answer, data = data[:1], data[1:]
            self.answer.callback(answer)
        if data and self.rpc.transport is not None:
            self.rpc.dataReceived(data)

    def connectionLost(self, reason=protocol.connectionDone):
        if self.rpc.transport is not None:
            self.rpc.connectionLost(reason)
        if not self.answer.called:
            self.answer.callback(b"")
        self.lost.callback(None)


class VisorAppTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.double = AppServerDouble(reactor)
        self.double.start()
        self.addCleanup(self.double.stop)
        self.peer_pk, _ = generate_keypair()
        self.app = VisorApp(self, self.double, "skypty", whitelist=[self.peer_pk])
        self.addCleanup(self.app.stop)
        yield self.app.start()

    def route_peer(self, pk, net="skynet", **kw):
        peer = RoutePeer(**kw)
        self.double.peer_dial(net, pk, self.app.pk, 22, peer)
        return peer

    def test_launched_hello_and_listening_on_skynet_and_dmsg(self):
        proc = self.app.proc()
        assert proc.hello_raw == encode_hello(proc.key)
        assert proc.calls[:2] == ["Listen", "Listen"] and proc.statuses == ["Running"]
        for net in ("skynet", "dmsg"):
            assert (net, self.app.pk.hex(), 22) in self.double.fabric
        log = self.app.process.log()
        assert "ssh_listen" in log and "off under a visor" in log  # said once, not silently dropped

    @defer.inlineCallbacks
    def test_whitelisted_route_peer_gets_an_exec_and_a_shell(self):
        peer = self.route_peer(self.peer_pk)
        assert (yield peer.answer) == requestline.ACCEPT
        req = T.CommandExecReq.cls(name="sh", arg=["-c", "echo on-$((6*7)); exit 7"], timeout_ms=10000)
        result = yield peer.rpc.call("pty.Exec", req, T.CommandExecReq, T.CommandExecResult)
        assert (result.stdout, result.exit_code) == (b"on-42\n", 7)
        shell = self.route_peer(self.peer_pk)
        assert (yield shell.answer) == requestline.ACCEPT
        yield shell.rpc.call("pty.Start", T.CommandReq.cls(name="sh", arg=[], env=["PS1=$ "]),
                             T.CommandReq, T.EMPTY)
        yield shell.rpc.call("pty.Write", b"echo shell-$((2+3)); exit\n", T.BYTES, T.INT)
        seen = b""
        while b"shell-5" not in seen:
            try:
                seen += yield shell.rpc.call("pty.Read", 4096, T.INT, T.BYTES)
            except Exception:
                break
        assert b"shell-5" in seen, seen
        shell.transport.loseConnection()
        peer.transport.loseConnection()
        yield until(lambda: not children_of(self.app.transport.pid), what="the shell and exec to be gone")

    @defer.inlineCallbacks
    def test_a_stranger_gets_nothing_spawned(self):
        stranger, _ = generate_keypair()
        enc = gob.Encoder()  # an Exec pipelined behind the request line, as an impatient client would
        exec_call = (enc.encode(T.Request.cls(service_method="pty.Exec", seq=0), T.Request)
                     + enc.encode(T.CommandExecReq.cls(name="sh", arg=["-c", "sleep 5"]), T.CommandExecReq))
        for net in ("skynet", "dmsg"):
            peer = self.route_peer(stranger, net=net, pipeline=exec_call)
            assert (yield peer.answer) == requestline.REJECT
            yield peer.lost
        assert children_of(self.app.transport.pid) == []
        assert "refused " + stranger.hex() in self.app.process.log()

    @defer.inlineCallbacks
    def test_sigint_stops_it_cleanly(self):
        peer = self.route_peer(self.peer_pk)
        assert (yield peer.answer) == requestline.ACCEPT
        yield peer.rpc.call("pty.Start", T.CommandReq.cls(name="sh", arg=[]), T.CommandReq, T.EMPTY)
        yield until(lambda: children_of(self.app.transport.pid), what="the shell")
        shell_pids = children_of(self.app.transport.pid)
        self.app.transport.signalProcess("INT")
        code = yield self.app.process.ended.addTimeout(15, reactor)
        assert code == 0, self.app.process.log()
        proc = self.app.proc()
        assert proc.calls.count("CloseListener") == 2 and not proc.connected
        yield peer.lost
        yield until(lambda: not any(os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read()
                                    .rsplit(")", 1)[1].split()[0] != "Z" for pid in shell_pids),
                    what="the shell to end with the app")


class StartFailureTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_a_bad_config_is_one_line_and_reported_to_the_visor(self):
        double = AppServerDouble(reactor)
        double.start()
        self.addCleanup(double.stop)
        app = VisorApp(self, double, "broken")
        with open(app.config_path, "w") as f:
            json.dump({"pty": {"persistent_sessions": "yes", "cli_address": app.cli}}, f)
        try:
            yield app.start()
        except AssertionError:
            pass
        code = yield app.process.ended
        proc = app.proc()
        assert code == 1 and proc.statuses == []
        assert len(proc.errors) == 1 and "pty.persistent_sessions" in proc.errors[0], proc.errors
        assert "\n" not in proc.errors[0]
        stderr_lines = [line for line in app.process.log().splitlines() if line.startswith("skypty-visor-app:")]
        assert stderr_lines == [f"skypty-visor-app: {proc.errors[0]}"], app.process.log()


class DialThroughVisorTests(unittest.TestCase):
    """Two apps on one fabric: A's control socket reaches B (whose config whitelists A)."""

    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        self.double = AppServerDouble(reactor)
        self.double.start()
        self.addCleanup(self.double.stop)
        self.a = VisorApp(self, self.double, "a")
        self.b = VisorApp(self, self.double, "b", whitelist=[self.a.pk])
        self.addCleanup(self.a.stop)
        self.addCleanup(self.b.stop)
        yield defer.gatherResults([self.a.start(), self.b.start()])

    def dials(self):
        out = [(net, outcome) for name, net, pk, port, outcome in self.double.dials if name == "a"]
        del self.double.dials[:]
        return out

    def exec_b(self, *options):
        return self.a.client("exec", self.b.pk.hex(), *options, "--", "sh", "-c", "echo via-$((3*3)); exit 4")

    @defer.inlineCallbacks
    def test_skynet_first_then_dmsg_then_both_errors(self):
        out, err, code = yield self.exec_b()
        assert (code, out) == (4, b"via-9\n"), err
        assert self.dials() == [("skynet", "ok")]

        self.double.failing["skynet"] = "route finder: no routes to the destination"
        out, err, code = yield self.exec_b()
        assert (code, out) == (4, b"via-9\n"), err
        assert self.dials() == [("skynet", self.double.failing["skynet"]), ("dmsg", "ok")]

        self.double.failing["dmsg"] = "dmsg error 404: entity not found in discovery"
        out, err, code = yield self.exec_b()
        assert code == 1 and out == b""
        assert err.count(b"\n") == 1, err
        assert b"skynet: " in err and b"no routes to the destination" in err, err
        assert b"dmsg: " in err and b"entity not found in discovery" in err, err
        assert [net for net, _ in self.dials()] == ["skynet", "dmsg"]

    @defer.inlineCallbacks
    def test_scheme_pins_each(self):
        out, err, code = yield self.exec_b("--scheme", "dmsg")
        assert code == 4, err
        assert self.dials() == [("dmsg", "ok")]
        out, err, code = yield self.exec_b("--scheme", "skynet")
        assert code == 4, err
        assert self.dials() == [("skynet", "ok")]
        self.double.failing["skynet"] = "route finder: no routes to the destination"
        out, err, code = yield self.exec_b("--scheme", "skynet")
        assert code == 1 and b"no routes to the destination" in err and b"dmsg" not in err, err
        assert self.dials() == [("skynet", self.double.failing["skynet"])]

    @defer.inlineCallbacks
    def test_the_peer_sees_the_visors_key_and_its_whitelist_decides(self):
        out, err, code = yield self.b.client("exec", self.a.pk.hex(), "--", "true")  # a does not whitelist b
        assert code == 1 and b"not authorized" in err, err
        assert [net for net, _ in self.dials()] == []  # a made no dial; b's were refused by a
        assert f"refused {self.b.pk.hex()} on skynet" in self.a.process.log()


class ScriptedAppClient:
    """Just the calls an AppConn makes, answered by the test."""

    closed = False

    def __init__(self):
        self.conns, self.reads, self.writes, self.closed_ids = {}, [], [], []

    def read(self, conn_id, n):
        d = defer.Deferred()
        self.reads.append(d)
        return d

    def write(self, conn_id, data):
        d = defer.Deferred()
        self.writes.append((data, d))
        return d

    def close_conn(self, conn_id):
        self.closed_ids.append(conn_id)
        return defer.succeed(None)


def test_an_answer_read_after_our_write_failed_still_arrives_before_the_end():
    # Regression: the peer wrote its reject byte and closed while our request
    # line was on its way; the failed Write ended the connection before the
    # pending Read delivered the byte, so the user saw "closed without
    # answering" instead of "not authorized".
    from skypty.visor.appnet import AppConn

    client = ScriptedAppClient()
    events = []

    class Recorder(protocol.Protocol):
        def dataReceived(self, data):
            events.append(("data", data))

        def connectionLost(self, reason):
            events.append(("lost", reason.type))

    conn = AppConn(client, 7, "local", "remote")
    conn.start(Recorder())
    conn.write(requestline.encode_request(requestline.PTY))
    _data, write_done = client.writes[0]
    eof = V.RPCIOErr.cls(text="EOF")
    write_done.callback(V.WriteResp.cls(n=0, err=V.RPCIOErr.cls(text="io: read/write on closed pipe")))
    assert events == []  # not ended yet: a Read is outstanding
    client.reads[0].callback(V.ReadResp.cls(b=requestline.REJECT, n=1, err=eof))
    assert events[0] == ("data", requestline.REJECT) and events[1][0] == "lost"
    assert client.closed_ids == [7]


def test_a_reply_that_ends_the_connection_leaves_the_rest_of_its_chunk_alone():
    # Seen with the real visor (skywire v1.3.28): on SIGINT the app closes its
    # listeners, and the visor answers in one TCP chunk: CloseListener's reply,
    # then the blocked Accept's error.  The reply that completes the stop lets
    # the reactor shut down, which drops the connection inside dataReceived
    # (failing every waiting call); the next reply of the chunk then raised
    # KeyError out of dataReceived ("Unhandled Error" in the visor's app log).
    from twisted.internet.testing import StringTransport
    from twisted.python import failure

    from skypty.wire.rpc import Method, RPCError, RPCServerConnection

    client = RPCClientProtocol()
    client.makeConnection(StringTransport())
    closed = client.call("k.CloseListener", 1, gob.UINT16, gob.EMPTY)
    accept = client.call("k.Accept", 1, gob.UINT16, V.AcceptResp)
    closed.addCallback(lambda _: client.connectionLost(failure.Failure(error.ConnectionLost())))
    accept_failures = []
    accept.addErrback(accept_failures.append)

    def refuse(_):
        raise RPCError("listening on closed connection")

    replies = []
    server = RPCServerConnection({"k.CloseListener": Method(gob.UINT16, gob.EMPTY, lambda _: gob.EMPTY.cls()),
                                  "k.Accept": Method(gob.UINT16, V.AcceptResp, refuse)}, replies.append)
    server.data_received(client.transport.value())
    client.dataReceived(b"".join(replies))  # both replies at once
    assert closed.called and accept_failures and "connection closed" in str(accept_failures[0].value)

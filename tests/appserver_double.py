"""A Skywire visor's app server, as the 2024 reference serves it, for tests.

Written from the reference (skycoin/skywire ``pkg/app/appcommon`` hello.go
and proc_config.go, ``pkg/app/appserver`` rpc_ingress_gateway.go and
proc_manager.go, ``pkg/app/appnet`` addr.go), not from skypty.visor: the gob
types are declared here again, so a mismatch in the product's shows.

* A real TCP listener.  An app connects, sends ``[u16 BE length][JSON
  hello]``; an unknown proc key gets the connection closed (as
  procManager.handleConn does).  Then Go net/rpc with gob, every method
  under the service named by the proc key hex.
* Behind it, a tiny network fabric standing in for the visor's router
  (skynet) and dmsg client: ``Listen`` binds (net, visor PK, port) and
  ``Dial`` from one proc reaches another proc's listener, or a test-side
  listener (``peer_listen``); a test can also dial in as any key
  (``peer_dial``), which is how a "route peer" reaches an app.
* ``failing[net] = text`` makes every Dial on that net fail with *text*.
* Connection ids come from a counter per proc, as idmanager's do; ``Read``
  blocks until bytes or EOF; ``Write`` replies once the peer's buffer is
  under FLOW_CAP (a real conn's back-pressure).
* As the real visor (v1.3.28, Go >= 1.21, see tests/vectors/gob_go121.json):
  gob type ids from 64, drawn from one table for every app connection (a Go
  process's), and a peer's EOF reported as ``RPCIOErr{Text "EOF", IsNetErr
  true}`` (the route's and the dmsg stream's errors are net.Errors).
"""

import json
import os

import attr
from twisted.internet import defer, error, protocol
from twisted.python import failure

from skypty.host.avatar import RPCFault
from skypty.keys import PublicKey
from skypty.wire.gob import BOOL, BYTES, EMPTY, INT, STRING, UINT16, BinaryMarshaler, Struct, TypeRegistry
from skypty.wire.rpc import Method, RPCServerProtocol

# -- the reference's types (field order and types decide the bytes) --------------------
PubKey = BinaryMarshaler("PubKey", lambda pk: pk.raw, PublicKey, gostring="cipher.PubKey")
Time = BinaryMarshaler("Time", lambda t: t, lambda raw: raw, gostring="time.Time")  # GobEncode bytes, kept raw
Addr = Struct("Addr", [("Net", STRING, "net"), ("PubKey", PubKey, "pk"), ("Port", UINT16, "port")])
DialResp = Struct("DialResp", [("ConnID", UINT16, "conn_id"), ("LocalPort", UINT16, "local_port")])
AcceptResp = Struct("AcceptResp", [("Remote", Addr, "remote"), ("ConnID", UINT16, "conn_id")])
RPCIOErr = Struct("RPCIOErr", [("Text", STRING, "text"), ("IsNetErr", BOOL, "is_net_err"),
                               ("IsTimeoutErr", BOOL, "is_timeout_err"),
                               ("IsTemporaryErr", BOOL, "is_temporary_err")])
WriteReq = Struct("WriteReq", [("ConnID", UINT16, "conn_id"), ("B", BYTES, "b")])
WriteResp = Struct("WriteResp", [("N", INT, "n"), ("Err", RPCIOErr, "err", True)])
ReadReq = Struct("ReadReq", [("ConnID", UINT16, "conn_id"), ("BufLen", INT, "buf_len")])
ReadResp = Struct("ReadResp", [("B", BYTES, "b"), ("N", INT, "n"), ("Err", RPCIOErr, "err", True)])
DeadlineReq = Struct("DeadlineReq", [("ConnID", UINT16, "conn_id"), ("Deadline", Time, "deadline")])

EOF_TEXT = "EOF"
CLOSED_PIPE = "io: read/write on closed pipe"
FLOW_CAP = 1024 * 1024
EPHEMERAL_MIN = 49152  # netutil.PorterMinEphemeral


def proc_key():
    return os.urandom(16).hex()


@attr.s
class Proc:
    """One app the visor launched."""

    key = attr.ib()
    visor_pk = attr.ib()
    name = attr.ib()
    hello = attr.ib(default=None)        # the JSON object it sent
    hello_raw = attr.ib(default=None)    # ... and the exact bytes
    connected = attr.ib(default=False)
    statuses = attr.ib(factory=list)
    errors = attr.ib(factory=list)
    calls = attr.ib(factory=list)        # method names, in order
    conns = attr.ib(factory=dict)        # id -> RpcEnd
    listeners = attr.ib(factory=dict)    # id -> Listener
    last_conn_id = attr.ib(default=0)
    last_listener_id = attr.ib(default=0)
    session = attr.ib(default=None)

    def next_id(self, table, attr_name):
        """idmanager.ReserveNextID: the next free id after the last one handed out."""
        nxt = (getattr(self, attr_name) + 1) & 0xFFFF
        while nxt in table:
            nxt = (nxt + 1) & 0xFFFF
        setattr(self, attr_name, nxt)
        return nxt


# -- the two kinds of connection end ----------------------------------------------------

class RpcEnd:
    """An app's end: bytes wait here for its Read calls."""

    def __init__(self):
        self.peer = None
        self.buffer = bytearray()
        self.closed = False
        self.peer_closed = False
        self._read = None        # (Deferred, size) of a blocked Read
        self._writers = []       # Deferreds of Writes waiting for this buffer to drain

    def feed(self, data):
        self.buffer += data
        self._serve_read()

    def room(self):
        d = defer.Deferred()
        if len(self.buffer) < FLOW_CAP or self.closed:
            d.callback(None)
        else:
            self._writers.append(d)
        return d

    def read(self, size):
        d = defer.Deferred()
        if self._read is not None:
            d.callback(ReadResp.cls(err=RPCIOErr.cls(text="a Read is already in flight")))
            return d
        self._read = (d, size)
        self._serve_read()
        return d

    def _serve_read(self):
        if self._read is None:
            return
        d, size = self._read
        if self.closed:
            resp = ReadResp.cls(err=RPCIOErr.cls(text=CLOSED_PIPE))
        elif self.buffer:
            data = bytes(self.buffer[:size])
            del self.buffer[:size]
            resp = ReadResp.cls(b=data, n=len(data))
        elif self.peer_closed:
            resp = ReadResp.cls(err=RPCIOErr.cls(text=EOF_TEXT, is_net_err=True))  # as the real visor flags it
        else:
            return
        self._read = None
        d.callback(resp)
        if len(self.buffer) < FLOW_CAP:
            writers, self._writers = self._writers, []
            for w in writers:
                w.callback(None)

    def write(self, data):
        """-> Deferred[WriteResp]."""
        if self.closed or self.peer_closed:
            return defer.succeed(WriteResp.cls(err=RPCIOErr.cls(text=CLOSED_PIPE)))
        self.peer.feed(data)
        return self.peer.room().addCallback(lambda _: WriteResp.cls(n=len(data)))

    def close(self):
        if self.closed:
            return
        self.closed = True
        self._serve_read()
        for w in self._writers:
            w.callback(None)
        self._writers = []
        if self.peer is not None:
            self.peer.peer_gone()

    def peer_gone(self):
        self.peer_closed = True
        self._serve_read()


class ProtocolEnd:
    """A test-side end: bytes go straight to a Twisted protocol (this is its transport)."""

    def __init__(self, proto, host, peer_addr):
        self.protocol = proto
        self.host, self.peer_addr = host, peer_addr
        self.peer = None
        self.disconnected = False

    # the transport the test protocol sees
    def write(self, data):
        if not self.disconnected and data:
            self.peer.feed(bytes(data))

    def writeSequence(self, seq):
        self.write(b"".join(seq))

    def loseConnection(self):
        self._gone(error.ConnectionDone())
        self.peer.peer_gone()

    abortConnection = loseConnection

    def getPeer(self):
        return self.peer_addr

    def getHost(self):
        return self.host

    def getPeerPK(self):
        return self.peer_addr.pk

    # from the app's end
    def feed(self, data):
        if not self.disconnected:
            self.protocol.dataReceived(data)

    def room(self):
        return defer.succeed(None)

    def peer_gone(self):
        self._gone(error.ConnectionDone())

    def _gone(self, reason):
        if not self.disconnected:
            self.disconnected = True
            self.protocol.connectionLost(failure.Failure(reason))


def link(a, b):
    a.peer, b.peer = b, a


# -- listeners ---------------------------------------------------------------------------

class Listener:
    def __init__(self, net, pk, port, owner=None, factory=None):
        self.net, self.pk, self.port = net, pk, port
        self.owner = owner        # a Proc, or None for a test-side listener
        self.factory = factory    # test side: builds the protocol for each connection
        self.backlog = []         # (RpcEnd, remote Addr) not yet accepted
        self.accepts = []         # Deferreds of blocked Accept calls
        self.closed = False

    def make_end(self, remote):
        if self.owner is not None:
            return RpcEnd()
        proto = self.factory.buildProtocol(remote)
        end = ProtocolEnd(proto, Addr.cls(net=self.net, pk=self.pk, port=self.port), remote)
        return end

    def deliver(self, end, remote):
        if isinstance(end, ProtocolEnd):
            end.protocol.makeConnection(end)
            return
        self.backlog.append((end, remote))
        self._serve()

    def accept(self):
        d = defer.Deferred()
        self.accepts.append(d)
        self._serve()
        return d

    def _serve(self):
        while self.accepts and self.backlog:
            self.accepts.pop(0).callback(self.backlog.pop(0))

    def close(self):
        self.closed = True
        for d in self.accepts:
            d.errback(RPCFault("listening on closed connection"))  # appnet.ErrClosedConn
        self.accepts = []
        for end, _ in self.backlog:
            end.close()
        self.backlog = []


# -- the app server ----------------------------------------------------------------------

class AppServerDouble:
    def __init__(self, reactor):
        self.reactor = reactor
        self.procs = {}          # proc key -> Proc
        self.fabric = {}         # (net, pk hex, port) -> Listener
        self.failing = {}        # net -> error text for every Dial on it
        self.dials = []          # (proc name, net, pk hex, port, "ok" | error text)
        self.rejected_hellos = []
        self.port = None
        self._ephemeral = EPHEMERAL_MIN
        self.gob_types = TypeRegistry()  # one Go process: every connection numbers types from one table

    def start(self):
        factory = protocol.Factory.forProtocol(lambda: AppServerConnection(self))
        factory.noisy = False
        self.port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        return self.port.getHost().port

    def stop(self):
        for proc in self.procs.values():
            if proc.session is not None:
                proc.session.transport.abortConnection()
        return self.port.stopListening() if self.port is not None else None

    def add_proc(self, visor_pk, name="skypty", args=(), work_dir=""):
        """Register a launch; -> the PROC_CONFIG value the visor would set."""
        key = proc_key()
        self.procs[key] = Proc(key=key, visor_pk=visor_pk, name=name)
        # json.Marshal of appcommon.ProcConfig, fields in struct order
        return json.dumps({
            "app_name": name, "app_server_addr": f"localhost:{self.port.getHost().port}",
            "proc_key": key, "proc_args": list(args), "proc_envs": None, "proc_work_dir": work_dir,
            "visor_pk": visor_pk.hex(), "routing_port": 22, "binary_loc": "", "log_db_loc": "",
            "log_store_path": "",
        }, separators=(",", ":"))

    def proc_named(self, name):
        return next(p for p in self.procs.values() if p.name == name)

    def _port(self):
        self._ephemeral += 1
        return self._ephemeral

    # -- a test acting as a peer on the fabric --
    def peer_dial(self, net, src_pk, dst_pk, port, proto):
        """Connect *proto* (in the test) to dst_pk:port on *net*, as src_pk; -> the
        listener's kind ("app" or "test"), or ConnectError."""
        listener = self.fabric.get((net, dst_pk.hex(), port))
        if listener is None or listener.closed:
            raise error.ConnectError(f"nothing listens on {net} {dst_pk.hex()}:{port}")
        local = Addr.cls(net=net, pk=src_pk, port=self._port())
        mine = ProtocolEnd(proto, local, Addr.cls(net=net, pk=dst_pk, port=port))
        theirs = listener.make_end(local)
        link(mine, theirs)
        proto.makeConnection(mine)
        listener.deliver(theirs, local)

    def peer_listen(self, net, pk, port, factory):
        self.fabric[(net, pk.hex(), port)] = Listener(net, pk, port, factory=factory)

    # -- the gateway's methods for one proc (RPCIngressGateway) --
    def methods(self, proc):
        def record(name, handler):
            def call(arg):
                proc.calls.append(name)
                return handler(arg)
            return call

        def conn(conn_id):
            end = proc.conns.get(conn_id)
            if end is None:
                raise RPCFault(f"no conn with key {conn_id}")
            return end

        def dial(addr):
            pk_hex = addr.pk.hex() if addr.pk is not None else ""
            if addr.net in self.failing:
                self.dials.append((proc.name, addr.net, pk_hex, addr.port, self.failing[addr.net]))
                raise RPCFault(self.failing[addr.net])
            listener = self.fabric.get((addr.net, pk_hex, addr.port))
            if listener is None or listener.closed:
                text = f"no listener on {addr.net} {pk_hex}:{addr.port}"
                self.dials.append((proc.name, addr.net, pk_hex, addr.port, text))
                raise RPCFault(text)
            self.dials.append((proc.name, addr.net, pk_hex, addr.port, "ok"))
            local_port = self._port()
            remote = Addr.cls(net=addr.net, pk=proc.visor_pk, port=local_port)
            mine, theirs = RpcEnd(), listener.make_end(remote)
            link(mine, theirs)
            conn_id = proc.next_id(proc.conns, "last_conn_id")
            proc.conns[conn_id] = mine
            listener.deliver(theirs, remote)
            return DialResp.cls(conn_id=conn_id, local_port=local_port)

        def listen(addr):
            key = (addr.net, proc.visor_pk.hex(), addr.port)
            if addr.net not in ("skynet", "dmsg"):
                raise RPCFault("network type is not valid")
            if key in self.fabric and not self.fabric[key].closed:
                raise RPCFault("port already bound")
            listener = Listener(addr.net, proc.visor_pk, addr.port, owner=proc)
            self.fabric[key] = listener
            lis_id = proc.next_id(proc.listeners, "last_listener_id")
            proc.listeners[lis_id] = listener
            return lis_id

        def accept(lis_id):
            listener = proc.listeners.get(lis_id)
            if listener is None:
                raise RPCFault(f"no listener with key {lis_id}")

            def accepted(item):
                end, remote = item
                conn_id = proc.next_id(proc.conns, "last_conn_id")
                proc.conns[conn_id] = end
                return AcceptResp.cls(remote=remote, conn_id=conn_id)

            return listener.accept().addCallback(accepted)

        def close_conn(conn_id):
            end = proc.conns.pop(conn_id, None)
            if end is None:
                raise RPCFault(f"no conn: no value with id {conn_id}")
            end.close()
            return EMPTY.cls()

        def close_listener(lis_id):
            listener = proc.listeners.pop(lis_id, None)
            if listener is None:
                raise RPCFault(f"no listener: no value with id {lis_id}")
            listener.close()
            return EMPTY.cls()

        def status(text):
            proc.statuses.append(text)
            return EMPTY.cls()

        def set_error(text):
            proc.errors.append(text)
            return EMPTY.cls()

        def deadline(req):
            conn(req.conn_id)
            return EMPTY.cls()

        table = {
            "SetDetailedStatus": Method(STRING, EMPTY, status),
            "SetConnectionDuration": Method(INT, EMPTY, lambda _: EMPTY.cls()),
            "SetError": Method(STRING, EMPTY, set_error),
            "SetAppPort": Method(UINT16, EMPTY, lambda _: EMPTY.cls()),
            "Dial": Method(Addr, DialResp, dial),
            "Listen": Method(Addr, UINT16, listen),
            "Accept": Method(UINT16, AcceptResp, accept),
            "Write": Method(WriteReq, WriteResp, lambda req: conn(req.conn_id).write(req.b)),
            "Read": Method(ReadReq, ReadResp, lambda req: conn(req.conn_id).read(req.buf_len)),
            "CloseConn": Method(UINT16, EMPTY, close_conn),
            "CloseListener": Method(UINT16, EMPTY, close_listener),
            "SetDeadline": Method(DeadlineReq, EMPTY, deadline),
            "SetReadDeadline": Method(DeadlineReq, EMPTY, deadline),
            "SetWriteDeadline": Method(DeadlineReq, EMPTY, deadline),
        }
        return {f"{proc.key}.{name}": Method(m.arg_type, m.reply_type, record(name, m.handler))
                for name, m in table.items()}

    def proc_gone(self, proc):
        """The app's connection closed: the visor closes its conns and listeners."""
        proc.connected = False
        for end in proc.conns.values():
            end.close()
        proc.conns.clear()
        for listener in proc.listeners.values():
            listener.close()
        proc.listeners.clear()


class AppServerConnection(protocol.Protocol):
    """One app's connection: the hello, then net/rpc."""

    def __init__(self, server):
        self.server = server
        self.buffer = b""
        self.proc = None
        self.rpc = None

    def dataReceived(self, data):
        if self.rpc is not None:
            self.rpc.dataReceived(data)
            return
        self.buffer += data
        if len(self.buffer) < 2:
            return
        size = int.from_bytes(self.buffer[:2], "big")
        if len(self.buffer) < 2 + size:
            return
        raw, rest = self.buffer[:2 + size], self.buffer[2 + size:]
        self.buffer = b""
        try:
            hello = json.loads(raw[2:])
            proc = self.server.procs.get(hello.get("proc_key"))
        except (ValueError, AttributeError):
            proc = None
        if proc is None or proc.connected:
            self.server.rejected_hellos.append(raw)
            self.transport.loseConnection()  # "Failed to find proc of given key."
            return
        proc.hello, proc.hello_raw, proc.connected, proc.session = hello, raw, True, self
        self.proc = proc
        self.rpc = RPCServerProtocol(self.server.methods(proc), registry=self.server.gob_types)
        self.rpc.makeConnection(self.transport)
        if rest:
            self.rpc.dataReceived(rest)

    def connectionLost(self, reason=protocol.connectionDone):
        if self.rpc is not None:
            self.rpc.connectionLost(reason)
        if self.proc is not None:
            self.server.proc_gone(self.proc)

"""The visor's app server, from the app's side: TCP, the hello, then Go
net/rpc with gob, every method under the service named by the proc key.

Go's net/rpc server runs each call in its own goroutine, so a blocking
``Accept`` or ``Read`` holds up nothing else; the flip side is that two calls
in flight may complete in any order, which is why appnet.AppConn never has
two ``Write`` calls of one connection in flight.
"""

from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger

from skypty.visor import types as V
from skypty.visor.procconfig import encode_hello
from skypty.wire.rpc import RPCClientConnection, RPCClientProtocol, RPCError

CONNECT_TIMEOUT = 10.0
# We never ask for more than appnet.READ_SIZE bytes per Read: a reply far
# larger than that is not a visor's, and must not make us buffer 64 MiB.
MAX_REPLY = 1024 * 1024


class AppServerError(RPCError):
    """The app server said no (its error text), or is gone."""


class AppServerProtocol(protocol.Protocol):
    """Hello first, then a net/rpc client on the same connection."""

    def __init__(self, proc_key):
        self.proc_key = proc_key
        self.rpc = RPCClientProtocol()
        self.rpc.core = RPCClientConnection(max_message=MAX_REPLY)
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.transport.write(encode_hello(self.proc_key))
        self.rpc.makeConnection(self.transport)

    def dataReceived(self, data):
        self.rpc.dataReceived(data)

    def connectionLost(self, reason=protocol.connectionDone):
        # First the news, then the failed calls: whoever sees a call fail knows why.
        if not self.lost.called:
            self.lost.callback(None)
        self.rpc.connectionLost(reason)


class AppServerClient:
    """The app server's methods as Deferreds (the reference's RPCIngressClient)."""

    log = Logger()

    def __init__(self, proc_config, proto):
        self.proc_config = proc_config
        self.visor_pk = proc_config.visor_pk
        self.proto = proto
        self.closed = False
        self._on_lost = []
        self.conns = {}  # conn id -> appnet.AppConn, ended when the visor goes
        proto.lost.addCallback(self._lost)

    def when_lost(self):
        """-> Deferred fired when the connection to the visor ends (it stopped or restarted)."""
        d = defer.Deferred()
        if self.closed:
            d.callback(None)
        else:
            self._on_lost.append(d)
        return d

    def _lost(self, reason):
        self.closed = True
        for conn in list(self.conns.values()):
            conn.app_server_lost()
        waiting, self._on_lost = self._on_lost, []
        for d in waiting:
            d.callback(None)

    def call(self, method, arg):
        arg_type, reply_type = V.METHODS[method]
        d = self.proto.rpc.call(f"{self.proc_config.proc_key}.{method}", arg, arg_type, reply_type)
        return d.addErrback(self._as_app_error)

    @staticmethod
    def _as_app_error(failure):
        failure.trap(RPCError)
        raise AppServerError(str(failure.value)) from None

    # -- status, shown by `skywire-cli visor app ls` --
    def set_detailed_status(self, status):
        return self.call("SetDetailedStatus", status)

    def set_error(self, text):
        return self.call("SetError", text)

    # -- networking --
    def address(self, net, pk, port):
        return V.Addr.cls(net=net, pub_key=pk, port=port)

    def listen(self, net, port):
        """-> Deferred[listener id]; the visor's own key, as the reference client does."""
        return self.call("Listen", self.address(net, self.visor_pk, port))

    def accept(self, listener_id):
        """-> Deferred[AcceptResp] (blocks in the visor until a peer connects)."""
        return self.call("Accept", listener_id)

    def dial(self, net, pk, port):
        """-> Deferred[DialResp]."""
        return self.call("Dial", self.address(net, pk, port))

    def read(self, conn_id, size):
        return self.call("Read", V.ReadReq.cls(conn_id=conn_id, buf_len=size))

    def write(self, conn_id, data):
        return self.call("Write", V.WriteReq.cls(conn_id=conn_id, b=data))

    def close_conn(self, conn_id):
        return self.call("CloseConn", conn_id)

    def close_listener(self, listener_id):
        return self.call("CloseListener", listener_id)

    def disconnect(self):
        self.proto.transport.loseConnection()


@defer.inlineCallbacks
def connect_app_server(reactor, proc_config, timeout=CONNECT_TIMEOUT):
    """TCP to the visor's app server and the hello -> Deferred[AppServerClient].

    The app server answers nothing to the hello: a wrong proc key shows as a
    closed connection at the first call."""
    endpoint = endpoints.TCP4ClientEndpoint(reactor, proc_config.app_server_host,
                                            proc_config.app_server_port, timeout=timeout)
    if ":" in proc_config.app_server_host:
        endpoint = endpoints.TCP6ClientEndpoint(reactor, proc_config.app_server_host,
                                                proc_config.app_server_port, timeout=timeout)
    proto = AppServerProtocol(proc_config.proc_key)
    yield endpoints.connectProtocol(endpoint, proto)
    return AppServerClient(proc_config, proto)

"""Listening and dialling through the visor's app server, as Twisted endpoints.

A connection there is only an id: its bytes move by ``Read`` and ``Write``
calls.  ``AppConn`` turns one id into a Twisted transport:

* reading: one ``Read`` in flight at a time, the next issued when the reply
  has been delivered, none while the protocol has paused us; so a slow
  consumer stops the reads and the visor's own flow control pushes back;
* writing: a queue drained by one ``Write`` at a time (the visor runs calls
  concurrently, so two in flight could land out of order); past HIGH_WATER
  queued bytes a registered producer is paused;
* closing: ``CloseConn`` once the queue is flushed; a visor-side error or
  EOF on ``Read`` or ``Write`` ends the connection.

The peer's key is the one the visor proved (the route's or the dmsg
stream's remote PK), given as ``getPeerPK()`` like every other entry point.
"""

import collections

import attr
from twisted.internet import defer, error, interfaces
from twisted.logger import Logger
from twisted.python import failure
from zope.interface import implementer

from skypty.dmsg.errors import DialError

READ_SIZE = 32 * 1024
WRITE_CHUNK = 64 * 1024
HIGH_WATER = 256 * 1024
# Accepted connections per listener; past it a newcomer is closed at once.
MAX_CONNS = 256
ACCEPT_RETRY_MIN, ACCEPT_RETRY_MAX = 1.0, 30.0


class AppNetDialError(DialError):
    """The visor could not dial (no route, peer offline...): its own words."""

    reason = "dial-failed"


@implementer(interfaces.IAddress)
@attr.s(frozen=True, slots=True)
class AppNetAddress:
    net = attr.ib()   # "skynet" or "dmsg"
    pk = attr.ib()
    port = attr.ib()

    def __str__(self):
        pk = self.pk.hex() if self.pk is not None else "?"
        return f"{self.net}:{pk}:{self.port}"


def _ignore(f):
    return None


@implementer(interfaces.ITransport, interfaces.IPushProducer, interfaces.IConsumer)
class AppConn:
    """One app server connection id as a Twisted transport."""

    log = Logger()

    def __init__(self, client, conn_id, local, remote, on_gone=None):
        self.client = client
        self.conn_id = conn_id
        self.local, self.remote = local, remote
        self.on_gone = on_gone
        self.protocol = None
        self.producer = None
        self._streaming = True
        self._producer_paused = False
        self.paused = False
        self._reading = False
        self._queue = collections.deque()
        self._queued = 0
        self._writing = False
        self.disconnecting = False
        self.disconnected = False

    def start(self, proto):
        self.protocol = proto
        self.client.conns[self.conn_id] = self
        proto.makeConnection(self)
        self._read_more()

    # -- reading --
    def _read_more(self):
        if self._reading or self.paused or self.disconnected:
            return
        self._reading = True
        self.client.read(self.conn_id, READ_SIZE).addCallbacks(self._got, self._read_failed)

    def _got(self, resp):
        self._reading = False
        if self.disconnected:
            return
        if not 0 <= resp.n <= READ_SIZE or len(resp.b) != resp.n:
            self.log.warn("the visor's Read reply for conn {id} is malformed (n={n}, {size} bytes)",
                          id=self.conn_id, n=resp.n, size=len(resp.b))
            return self._end(error.ConnectionLost("malformed Read reply"))
        if resp.b:
            try:
                self.protocol.dataReceived(resp.b)
            except Exception:
                self.log.failure("protocol failed on {peer}; closing that connection", peer=str(self.remote))
                return self._end(error.ConnectionAborted())
        if resp.err is not None:
            return self._end(_io_error(resp.err))
        self._read_more()

    def _read_failed(self, f):
        self._reading = False
        self._end(error.ConnectionLost(f"Read: {f.getErrorMessage()}"))

    # -- writing --
    def write(self, data):
        if not data or self.disconnecting or self.disconnected:
            return
        self._queue.append(bytes(data))
        self._queued += len(data)
        if self._queued > HIGH_WATER and self.producer is not None and not self._producer_paused:
            self._producer_paused = True
            self.producer.pauseProducing()
        self._flush()

    def writeSequence(self, seq):
        self.write(b"".join(seq))

    def _take_chunk(self):
        parts, size = [], 0
        while self._queue and size < WRITE_CHUNK:
            item = self._queue.popleft()
            room = WRITE_CHUNK - size
            if len(item) > room:
                self._queue.appendleft(item[room:])
                item = item[:room]
            parts.append(item)
            size += len(item)
        return b"".join(parts)

    def _flush(self):
        if self._writing or self.disconnected:
            return
        if not self._queue:
            if self.disconnecting:
                self._end(error.ConnectionDone())
            elif self.producer is not None and not self._streaming:
                self.producer.resumeProducing()
            return
        chunk = self._take_chunk()
        self._writing = True
        self.client.write(self.conn_id, chunk).addCallbacks(
            lambda resp: self._wrote(chunk, resp), self._write_failed)

    def _wrote(self, chunk, resp):
        self._writing = False
        if self.disconnected:
            return
        if resp.err is not None:
            return self._write_side_failed(_io_error(resp.err))
        if not 0 <= resp.n <= len(chunk):
            return self._end(error.ConnectionLost("malformed Write reply"))
        if resp.n < len(chunk):  # a short write without an error: send the rest next
            self._queue.appendleft(chunk[resp.n:])
        self._queued -= resp.n
        if self._producer_paused and self._queued < HIGH_WATER // 2:
            self._producer_paused = False
            if self.producer is not None:
                self.producer.resumeProducing()
        self._flush()

    def _write_failed(self, f):
        self._writing = False
        self._write_side_failed(error.ConnectionLost(f"Write: {f.getErrorMessage()}"))

    def _write_side_failed(self, reason):
        # The peer may have answered and closed (a reject byte, then EOF)
        # while our bytes were on their way: what it sent is still to be read,
        # so the connection ends when reading does, not at the failed write.
        self._queue.clear()
        self._queued = 0
        self.disconnecting = True  # nothing more is written
        if not self._reading:
            self._end(reason)

    # -- ITransport --
    def loseConnection(self):
        if self.disconnecting or self.disconnected:
            return
        self.disconnecting = True
        if not self._writing and not self._queue:
            self._end(error.ConnectionDone())

    def abortConnection(self):
        self._queue.clear()
        self._end(error.ConnectionAborted())

    def getPeer(self):
        return self.remote

    def getHost(self):
        return self.local

    def getPeerPK(self):
        return self.remote.pk

    # -- IPushProducer: the protocol pausing us stops our Read calls --
    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        if self.paused:
            self.paused = False
            self._read_more()

    def stopProducing(self):
        self.abortConnection()

    # -- IConsumer --
    def registerProducer(self, producer, streaming):
        self.producer, self._streaming = producer, streaming
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self):
        self.producer = None

    # -- the end --
    def app_server_lost(self):
        self._end(error.ConnectionLost("the visor's app server connection closed"), tell_visor=False)

    def _end(self, reason, tell_visor=True):
        if self.disconnected:
            return
        self.disconnected = True
        self._queue.clear()
        if self.client.conns.get(self.conn_id) is self:
            del self.client.conns[self.conn_id]
        if tell_visor and not self.client.closed:
            # The visor keeps the conn (and its id) until told; a failed close means it is gone already.
            self.client.close_conn(self.conn_id).addErrback(_ignore)
        if self.producer is not None:
            producer, self.producer = self.producer, None
            if isinstance(reason, error.ConnectionAborted):
                producer.stopProducing()
        if self.on_gone is not None:
            self.on_gone(self)
        self.protocol.connectionLost(failure.Failure(reason))


def _io_error(err):
    """RPCIOErr -> the Twisted reason: EOF is a clean end.  A real visor
    (skywire v1.3.28) flags a route's or dmsg stream's EOF as a net.Error
    (IsNetErr true), so only the text says it."""
    if err.text == "EOF":
        return error.ConnectionDone()
    return error.ConnectionLost(err.text or "network error")


# -- listening ------------------------------------------------------------------------

@implementer(interfaces.IListeningPort)
class AppNetPort:
    """A visor listener: Accept in a loop, one AppConn per accepted id."""

    log = Logger()

    def __init__(self, reactor, client, net, port, listener_id, factory, max_conns=MAX_CONNS):
        self.reactor = reactor
        self.client = client
        self.net, self.port = net, port
        self.listener_id = listener_id
        self.factory = factory
        self.max_conns = max_conns
        self.conns = set()
        self.stopped = False
        self._retry = ACCEPT_RETRY_MIN
        self._retry_call = None

    def startListening(self):
        self.factory.doStart()
        self._accept_next()

    def _accept_next(self):
        self._retry_call = None
        if self.stopped or self.client.closed:
            return
        self.client.accept(self.listener_id).addCallbacks(self._accepted, self._accept_failed)

    def _accepted(self, resp):
        if self.stopped:
            self.client.close_conn(resp.conn_id).addErrback(_ignore)
            return
        self._retry = ACCEPT_RETRY_MIN
        remote = AppNetAddress(resp.remote.net or self.net, resp.remote.pub_key, resp.remote.port)
        if remote.pk is None or remote.pk.is_null:
            # No proven key, no whitelist decision: nothing to serve.
            self.log.warn("{net} port {port}: the visor gave a connection without a peer key; closed",
                          net=self.net, port=self.port)
            self.client.close_conn(resp.conn_id).addErrback(_ignore)
        elif len(self.conns) >= self.max_conns:
            self.log.warn("{net} port {port}: {n} connections already; closed the one from {pk}",
                          net=self.net, port=self.port, n=len(self.conns), pk=remote.pk.hex())
            self.client.close_conn(resp.conn_id).addErrback(_ignore)
        else:
            self._serve(resp.conn_id, remote)
        self._accept_next()

    def _serve(self, conn_id, remote):
        proto = self.factory.buildProtocol(remote)
        if proto is None:
            self.client.close_conn(conn_id).addErrback(_ignore)
            return
        conn = AppConn(self.client, conn_id, self.getHost(), remote, on_gone=self.conns.discard)
        self.conns.add(conn)
        conn.start(proto)

    def _accept_failed(self, f):
        if self.stopped or self.client.closed:
            return
        self.log.warn("{net} port {port}: Accept failed: {err}; retrying in {delay:.0f}s",
                      net=self.net, port=self.port, err=f.getErrorMessage(), delay=self._retry)
        self._retry_call = self.reactor.callLater(self._retry, self._accept_next)
        self._retry = min(self._retry * 2, ACCEPT_RETRY_MAX)

    def stopListening(self):
        if self.stopped:
            return defer.succeed(None)
        self.stopped = True
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        for conn in list(self.conns):
            conn.abortConnection()
        self.factory.doStop()
        if self.client.closed:
            return defer.succeed(None)
        return self.client.close_listener(self.listener_id).addErrback(_ignore)

    def getHost(self):
        return AppNetAddress(self.net, self.client.visor_pk, self.port)


@implementer(interfaces.IStreamServerEndpoint)
class AppNetServerEndpoint:
    """Listen on *net* ("skynet" or "dmsg") port *port* of the visor."""

    def __init__(self, reactor, client, net, port, max_conns=MAX_CONNS):
        self.reactor, self.client = reactor, client
        self.net, self.port = net, port
        self.max_conns = max_conns

    def listen(self, factory):
        def listening(listener_id):
            port = AppNetPort(self.reactor, self.client, self.net, self.port, listener_id, factory,
                              self.max_conns)
            port.startListening()
            return port

        return self.client.listen(self.net, self.port).addCallback(listening)


# -- dialling ---------------------------------------------------------------------------

@implementer(interfaces.IStreamClientEndpoint)
class AppNetClientEndpoint:
    """Dial *pk*:*port* on *net* through the visor.  Cancelling the Deferred
    (a timeout) cannot withdraw the Dial call: a connection the visor opens
    after that is closed at once."""

    def __init__(self, client, net, pk, port):
        self.client = client
        self.net, self.pk, self.port = net, pk, port

    def connect(self, factory):
        cancelled = []
        result = defer.Deferred(lambda d: cancelled.append(True))
        remote = AppNetAddress(self.net, self.pk, self.port)

        def dialled(resp):
            if cancelled:
                self.client.close_conn(resp.conn_id).addErrback(_ignore)
                return
            proto = factory.buildProtocol(remote)
            if proto is None:
                self.client.close_conn(resp.conn_id).addErrback(_ignore)
                result.errback(error.ConnectError("the protocol factory refused the connection"))
                return
            local = AppNetAddress(self.net, self.client.visor_pk, resp.local_port)
            AppConn(self.client, resp.conn_id, local, remote).start(proto)
            result.callback(proto)

        def failed(f):
            if not cancelled:
                result.errback(AppNetDialError(f"{self.net}: {f.getErrorMessage()}"))

        self.client.dial(self.net, self.pk, self.port).addCallbacks(dialled, failed)
        return result

"""Go net/rpc over gob: server and client, sans-I/O cores plus Twisted glue.

Each call is gob(Request{ServiceMethod, Seq}) then gob(argument); each reply
gob(Response{ServiceMethod, Seq, Error}) then gob(result), or an empty struct
when Error is set.  Calls are served concurrently: a handler may return a
Deferred (a blocking pty.Read) while later calls (pty.Write) complete.
The client core has no Twisted dependency, so a blocking command-line client
can use it with plain sockets.
"""

from skypty.errors import ProtocolError, SkyptyError
from skypty.wire import gob
from skypty.wire.types import EMPTY, Request, Response

MAX_OUTSTANDING = 64
# The largest call a server reads: a pty.Write or a 1 MiB exec stdin with room
# to spare.  Replies may be larger (an exec result carries up to 2 x 16 MiB),
# so the client keeps gob's own cap.
MAX_CALL = 4 * 1024 * 1024


class RPCError(SkyptyError):
    """An error string from the other side (or "connection closed")."""


class Method:
    __slots__ = ("arg_type", "reply_type", "handler")

    def __init__(self, arg_type, reply_type, handler):
        self.arg_type = arg_type
        self.reply_type = reply_type
        self.handler = handler  # callable(arg) -> value | Deferred


def _unknown(service_method, methods):
    """Go's exact texts for a call nobody serves."""
    service, dot, _ = service_method.rpartition(".")
    if not dot:
        return f"rpc: service/method request ill-formed: {service_method}"
    if any(name.rpartition(".")[0] == service for name in methods):
        return f"rpc: can't find method {service_method}"
    return f"rpc: can't find service {service_method}"


class RPCServerConnection:
    """Server side of one connection.  *send(bytes)* writes to the peer;
    *pause()/resume()* (optional) stop and restart reading, used when too
    many calls are outstanding."""

    def __init__(self, methods, send, pause=None, resume=None, log=None, max_message=MAX_CALL, registry=None):
        self.methods = methods
        self.send = send
        self._pause, self._resume = pause, resume
        self.log = log
        self._dec = gob.Decoder(max_message=max_message)
        self._enc = gob.Encoder(registry=registry)  # registry: ids shared as in one Go process
        self._header = None
        self.outstanding = 0
        self._paused = False
        self.closed = False

    def data_received(self, data):
        self._dec.feed(data)
        self._drain()

    def _drain(self):
        while not self.closed and self.outstanding < MAX_OUTSTANDING:
            if self._header is None:
                header = self._dec.next_value(Request)
                if header is gob.NEED_MORE:
                    return
                self._header = header
            header = self._header
            method = self.methods.get(header.service_method)
            arg = self._dec.next_value(method.arg_type if method else None)
            if arg is gob.NEED_MORE:
                return
            self._header = None
            if method is None:
                self._reply(header, None, _unknown(header.service_method, self.methods))
                continue
            self._call(header, method, arg)
        if not self.closed and self.outstanding >= MAX_OUTSTANDING and not self._paused and self._pause:
            self._paused = True  # back-pressure: read no more calls until some finish
            self._pause()

    def _call(self, header, method, arg):
        # maybeDeferred without its cost on the hot path: most handlers
        # (pty.Write) answer at once, and a Deferred per call showed up.
        self.outstanding += 1
        try:
            result = method.handler(arg)
        except Exception:
            from twisted.python.failure import Failure

            self._done(header, method, None, Failure())
            return
        if hasattr(result, "addCallbacks"):  # a Deferred: the call is still outstanding
            result.addCallbacks(lambda value: self._done(header, method, value, None),
                                lambda failure: self._done(header, method, None, failure))
        else:
            self._done(header, method, result, None)

    def _done(self, header, method, value, failure):
        self.outstanding -= 1
        if failure is not None:
            if not failure.check(RPCError) and self.log is not None:
                self.log.failure("rpc {method} failed", failure, method=header.service_method)
            message = str(failure.value) or failure.value.__class__.__name__
            self._reply(header, None, message)
        else:
            self._reply(header, (method.reply_type, value), "")
        if self._paused and self.outstanding < MAX_OUTSTANDING // 2:
            self._paused = False
            self._resume()
            self._drain()

    def _reply(self, header, result, error):
        if self.closed:
            return
        response = Response.cls(service_method=header.service_method, seq=header.seq, error=error)
        head = self._enc.encode(response, Response)  # first: type ids follow the order of use
        if error:
            body = self._enc.encode(EMPTY.cls(), EMPTY)
        else:
            reply_type, value = result
            body = self._enc.encode(value, reply_type)
        self.send(head + body)

    def connection_lost(self):
        self.closed = True


class RPCClientConnection:
    """Client side: ``start_call`` encodes a call; ``data_received`` returns
    the finished calls as (seq, value-or-RPCError).  No Twisted here."""

    def __init__(self, max_message=gob.MAX_MESSAGE, registry=None):
        self._enc = gob.Encoder(registry=registry)
        self._dec = gob.Decoder(max_message=max_message)
        self._pending = {}  # seq -> reply type
        self._next_seq = 0
        self._response = None

    def start_call(self, service_method, arg, arg_type, reply_type):
        """-> (seq, bytes to send)."""
        seq = self._next_seq
        self._next_seq += 1
        self._pending[seq] = reply_type
        request = Request.cls(service_method=service_method, seq=seq)
        return seq, self._enc.encode(request, Request) + self._enc.encode(arg, arg_type)

    @property
    def pending(self):
        return len(self._pending)

    def data_received(self, data):
        self._dec.feed(data)
        done = []
        while True:
            if self._response is None:
                response = self._dec.next_value(Response)
                if response is gob.NEED_MORE:
                    return done
                if response.seq not in self._pending:
                    raise ProtocolError(f"rpc: reply for unknown call {response.seq}")
                self._response = response
            response = self._response
            reply_type = self._pending[response.seq]
            body = self._dec.next_value(None if response.error else reply_type)
            if body is gob.NEED_MORE:
                return done
            self._response = None
            del self._pending[response.seq]
            done.append((response.seq, RPCError(response.error) if response.error else body))


# -- Twisted glue -------------------------------------------------------------------

def _twisted():
    from twisted.internet import defer, protocol
    from twisted.logger import Logger

    return defer, protocol, Logger


class _Lazy:
    """Build the Twisted protocol classes on first use (keeps imports cheap)."""

    _classes = None

    @classmethod
    def classes(cls):
        if cls._classes is None:
            cls._classes = _make_classes()
        return cls._classes


def _make_classes():
    defer, protocol, Logger = _twisted()

    class RPCServerProtocol(protocol.Protocol):
        log = Logger()

        def __init__(self, methods, on_close=None, immediate=False, registry=None):
            self.methods = methods
            self.on_close = on_close
            self.immediate = immediate
            self.registry = registry
            self.core = None

        def connectionMade(self):
            t = self.transport
            send = t.write
            if self.immediate:  # replies leave in this reactor turn (skypty.wire.writenow)
                from skypty.wire.writenow import write_now

                send = lambda data: write_now(t, data)  # noqa: E731
            self._holds = set()
            can_pause = hasattr(t, "pauseProducing")
            self.core = RPCServerConnection(self.methods, send,
                                            (lambda: self._hold("calls")) if can_pause else None,
                                            (lambda: self._release("calls")) if can_pause else None, self.log,
                                            registry=self.registry)
            # Replies a peer does not read pile up in the transport's write
            # buffer: the transport pauses us (IPushProducer) past its high-water
            # mark, and we stop reading that peer's calls until it drains.
            if can_pause and hasattr(t, "registerProducer"):
                try:
                    t.registerProducer(self, True)
                except RuntimeError:
                    pass  # another producer already feeds this transport

        def _hold(self, why):
            if not self._holds:
                self.transport.pauseProducing()
            self._holds.add(why)

        def _release(self, why):
            if why in self._holds:
                self._holds.discard(why)
                if not self._holds:
                    self.transport.resumeProducing()

        # IPushProducer, for the transport's write buffer
        def pauseProducing(self):
            self._hold("writes")

        def resumeProducing(self):
            self._release("writes")

        def stopProducing(self):
            pass

        def dataReceived(self, data):
            try:
                self.core.data_received(data)
            except ProtocolError as e:
                self.log.warn("bad rpc input from {peer}: {err}", peer=str(self.transport.getPeer()), err=e)
                self.core.connection_lost()
                self.transport.abortConnection()

        def connectionLost(self, reason=protocol.connectionDone):
            if self.core is not None:
                self.core.connection_lost()
            if self.on_close is not None:
                on_close, self.on_close = self.on_close, None
                on_close()

    class RPCClientProtocol(protocol.Protocol):
        log = Logger()

        def __init__(self):
            self.core = RPCClientConnection()
            self._waiting = {}
            self.closed = defer.Deferred()
            self.connected_d = defer.Deferred()
            self.lost = False

        def connectionMade(self):
            self.connected_d.callback(self)

        def call(self, service_method, arg, arg_type, reply_type):
            if self.lost:
                return defer.fail(RPCError("connection closed"))
            seq, data = self.core.start_call(service_method, arg, arg_type, reply_type)
            d = defer.Deferred()
            self._waiting[seq] = d
            self.transport.write(data)
            return d

        def dataReceived(self, data):
            try:
                done = self.core.data_received(data)
            except ProtocolError as e:
                self.log.warn("bad rpc reply: {err}", err=e)
                self.transport.abortConnection()
                return
            for seq, result in done:
                # A callback for an earlier reply of this chunk may have ended
                # the connection, which already failed every waiting call.
                d = self._waiting.pop(seq, None)
                if d is None:
                    continue
                if isinstance(result, RPCError):
                    d.errback(result)
                else:
                    d.callback(result)

        def connectionLost(self, reason=protocol.connectionDone):
            self.lost = True
            waiting, self._waiting = self._waiting, {}
            for d in waiting.values():
                d.errback(RPCError("connection closed"))
            if not self.closed.called:
                self.closed.callback(None)

    return RPCServerProtocol, RPCClientProtocol


def RPCServerProtocol(methods, on_close=None, immediate=False, registry=None):
    """*immediate*: send each reply in the turn that made it instead of
    Twisted's next one (the pty service: a reactor turn per keystroke).
    *registry*: a gob.TypeRegistry shared with other connections, as one Go
    process numbers its types (a test double of a Go server)."""
    return _Lazy.classes()[0](methods, on_close, immediate, registry)


def RPCClientProtocol():
    return _Lazy.classes()[1]()

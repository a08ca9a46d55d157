"""dmsg streams: a signed StreamRequest/Response carrying the KK handshake,
then KK transport frames on a yamux stream, presented as a Twisted transport
whose ``getPeerPK()`` is the peer's proven key.

Current reference servers close a stream after 2 idle minutes (a bridge
after 5).  So that a quiet exec, sftp, proxy or web stream survives, the KK
transport writes an empty-plaintext frame whenever nothing was written for
``KEEPALIVE_INTERVAL`` seconds, whatever the inner protocol: it costs 26
bytes and every receiver (skypty's and the reference's noise reader) drops
empty plaintexts without passing anything on.
"""

import time

from twisted.internet import defer, interfaces, protocol
from twisted.logger import Logger
from zope.interface import implementer

from skypty.dmsg.session import (
    STREAM_HANDSHAKE_TIMEOUT, DmsgError, EnvelopeReader, object_hash, sign_object,
)
from skypty.errors import ProtocolError
from skypty.keys import InvalidKey
from skypty.wire.noise import NoiseError, NoiseHandshake
from skypty.wire import types as T

KEEPALIVE_INTERVAL = 30.0


@implementer(interfaces.ITransport, interfaces.IPushProducer, interfaces.IConsumer)
class KKTransport:
    """What the inner protocol sees: encrypts writes, knows the peer's key."""

    def __init__(self, stream, encoder, peer_pk, local_pk):
        self.stream = stream
        self.encoder = encoder
        self.peer_pk = peer_pk
        self.local_pk = local_pk
        self.disconnecting = False
        self.last_write = None  # set by the stream's keepalive

    def write(self, data):
        if data and not self.disconnecting:
            self.stream.transport.write(self.encoder.encrypt(data))
            self.stream.wrote()

    def writeSequence(self, seq):
        self.write(b"".join(seq))

    def loseConnection(self):
        self.disconnecting = True
        self.stream.transport.loseConnection()

    def abortConnection(self):
        self.stream.transport.abortConnection()

    def getPeerPK(self):
        return self.peer_pk

    def getPeer(self):
        return self.stream.transport.getPeer()

    def getHost(self):
        return self.stream.transport.getHost()

    def registerProducer(self, producer, streaming):
        self.stream.transport.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self.stream.transport.unregisterProducer()

    def pauseProducing(self):
        self.stream.transport.pauseProducing()

    def resumeProducing(self):
        self.stream.transport.resumeProducing()

    def stopProducing(self):
        self.stream.transport.abortConnection()


class KKStream(protocol.Protocol):
    """Base: after ``_open(encoder, decoder, peer)``, carries the inner protocol."""

    log = Logger()
    keepalive_interval = KEEPALIVE_INTERVAL  # None: no keepalive frames

    def __init__(self, reactor=None):
        self.inner = None
        self._decoder = None
        self._encoder = None
        self._reader = EnvelopeReader()
        self._reactor = reactor
        self._last_write = 0.0
        self._keepalive_call = None
        self._deadline = None

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    # -- the request/response deadline --
    def _start_deadline(self, seconds, on_timeout):
        self._deadline = self.reactor.callLater(seconds, on_timeout)

    def _stop_deadline(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    # -- keepalive frames --
    def wrote(self):
        self._last_write = self.reactor.seconds()

    def _schedule_keepalive(self, delay):
        if self.keepalive_interval:
            self._keepalive_call = self.reactor.callLater(delay, self._keepalive)

    def _keepalive(self):
        self._keepalive_call = None
        if self.transport is None or getattr(self.transport, "disconnected", False):
            return
        idle = self.reactor.seconds() - self._last_write
        if idle >= self.keepalive_interval:
            # An empty plaintext: the peer's noise reader drops it, but every
            # server on the way sees the stream is alive.
            self.transport.write(self._encoder.encrypt_one(b""))
            self.wrote()
            idle = 0.0
        self._schedule_keepalive(self.keepalive_interval - idle)

    def _open(self, encoder, decoder, peer_pk, local_pk, inner, rest=b""):
        self._stop_deadline()
        self._decoder = decoder
        self._encoder = encoder
        self.inner = inner
        self.wrote()
        self._schedule_keepalive(self.keepalive_interval)
        inner.makeConnection(KKTransport(self, encoder, peer_pk, local_pk))
        if rest:
            self._frames(rest)

    def _frames(self, data):
        try:
            for plaintext in self._decoder.receive(data):
                self.inner.dataReceived(plaintext)
        except NoiseError as e:
            self.log.warn("bad dmsg stream frame: {err}", err=e)
            self.transport.abortConnection()

    def connectionLost(self, reason=protocol.connectionDone):
        self._stop_deadline()
        if self._keepalive_call is not None and self._keepalive_call.active():
            self._keepalive_call.cancel()
        self._keepalive_call = None
        if self.inner is not None:
            self.inner.connectionLost(reason)


class StreamRefusedError(DmsgError):
    """The destination answered the request and said no; ``code`` is the
    reference's error code it gave (0: none)."""

    code = 0


NO_LISTENER = 306  # the reference's "request has no associated listener"


class DialStream(KKStream):
    """The dialing side: request out, response in, then the inner protocol.

    ``done`` fires with the inner protocol, or fails: StreamRefusedError
    when the peer said no, DmsgError when the stream closed or timed out
    unanswered (the inner protocol is then left untouched, so the caller
    may try another server with it)."""

    def __init__(self, session, sk, src_port, dst_pk, dst_port, inner, timeout=None):
        super().__init__(getattr(session, "reactor", None))
        self.session, self.sk = session, sk
        self.dst_pk, self.dst_port = dst_pk, dst_port
        self.src_port = src_port
        self.inner_pending = inner
        self.timeout = timeout
        self.done = defer.Deferred()
        self.hs = NoiseHandshake("KK", True, sk, dst_pk)

    def connectionMade(self):
        req = T.StreamRequest.cls(
            timestamp=time.time_ns(),
            src_addr=T.Addr.cls(pk=self.sk.public_key, port=self.src_port),
            dst_addr=T.Addr.cls(pk=self.dst_pk, port=self.dst_port),
            noise_msg=self.hs.write_message())
        self.signed = sign_object(self.sk, req, T.StreamRequest)
        self.transport.write(self.session.cipher.seal(self.signed))
        if self.timeout:
            self._start_deadline(self.timeout, self._timed_out)

    def _timed_out(self):
        self._deadline = None
        self._fail(DmsgError(f"{self.dst_pk.hex()} did not answer within {self.timeout:g}s"))

    def _fail(self, err):
        if not self.done.called:
            self.done.errback(err)
        if self.transport is not None and not getattr(self.transport, "disconnected", False):
            self.transport.abortConnection()

    def dataReceived(self, data):
        if self.inner is not None:
            return self._frames(data)
        if self.done.called:
            return  # gave up on this stream already
        try:
            got = self._reader.take_object(data, self.session.cipher, T.StreamResponse)
            if got is None:
                return
            resp, _signed, sig, raw, rest = got
            self.dst_pk.verify(raw, sig)
            if bytes(resp.req_hash) != object_hash(self.signed):
                raise DmsgError("stream response answers another request")
            if not resp.accepted:
                refused = StreamRefusedError(f"{self.dst_pk.hex()} refused the stream (code {resp.err_code})")
                refused.code = resp.err_code
                raise refused
            self.hs.read_message(resp.noise_msg)  # a payload (a PQ ciphertext) is ignored
            encoder, decoder = self.hs.split()
        except (ProtocolError, InvalidKey) as e:
            self._fail(e)
            return
        self._open(encoder, decoder, self.dst_pk, self.sk.public_key, self.inner_pending)
        self.done.callback(self.inner)
        if rest:
            self._frames(rest)

    def connectionLost(self, reason=protocol.connectionDone):
        if not self.done.called:
            self.done.errback(DmsgError(f"{self.dst_pk.hex()} is not reachable through this dmsg server "
                                        "(the server closed the stream unanswered)"))
        super().connectionLost(reason)


class AcceptStream(KKStream):
    """The listening side: request in, response out, then a listener's protocol.

    A malformed or unwanted request is a protocol error: one log line, that
    stream closed, the session and its other streams untouched."""

    def __init__(self, session, sk, listeners):
        super().__init__(getattr(session, "reactor", None))
        self.session, self.sk, self.listeners = session, sk, listeners
        self._refused = False

    def connectionMade(self):
        # The server forwards the request with the stream; one that never comes is dropped.
        self._start_deadline(2 * STREAM_HANDSHAKE_TIMEOUT, self._timed_out)

    def _timed_out(self):
        self._deadline = None
        self.log.warn("refused dmsg stream: no stream request within {t:g}s", t=2 * STREAM_HANDSHAKE_TIMEOUT)
        self.transport.abortConnection()

    def dataReceived(self, data):
        if self.inner is not None:
            return self._frames(data)
        if self._refused:
            return
        try:
            got = self._reader.take_stream_request(data, self.session.cipher)
            if got is None:
                return
            req, signed, rest = got
            if req.dst_addr.pk != self.sk.public_key:
                raise DmsgError("stream request for another key")
            factory = self.listeners.get(req.dst_addr.port)
            if factory is None:
                # Say so, signed (the reference's code 306), so the dialer can tell
                # "wrong port" from "host gone" instead of waiting on a bare close.
                no = T.StreamResponse.cls(req_hash=list(object_hash(signed)), accepted=False,
                                          err_code=NO_LISTENER, noise_msg=b"")
                self.transport.write(self.session.cipher.seal(sign_object(self.sk, no, T.StreamResponse)))
                raise DmsgError(f"nothing listens on dmsg port {req.dst_addr.port}")
            hs = NoiseHandshake("KK", False, self.sk, req.src_addr.pk)
            hs.read_message(req.noise_msg)  # a payload (a PQ offer) is ignored: classical answer
            resp = T.StreamResponse.cls(req_hash=list(object_hash(signed)), accepted=True,
                                        noise_msg=hs.write_message())
            encoder, decoder = hs.split()
        except (ProtocolError, InvalidKey) as e:
            self._refuse(e)
            return
        except Exception as e:  # a bug must cost this stream only, and one line
            self._refuse(f"unexpected {type(e).__name__}: {e}")
            return
        inner = factory.buildProtocol(None)
        if inner is None:
            self._refuse("the listener declined")
            return
        self.transport.write(self.session.cipher.seal(sign_object(self.sk, resp, T.StreamResponse)))
        self._open(encoder, decoder, req.src_addr.pk, self.sk.public_key, inner, rest)

    def _refuse(self, why):
        self._refused = True
        self._stop_deadline()
        self.log.warn("refused dmsg stream: {err}", err=why)
        self.transport.loseConnection()

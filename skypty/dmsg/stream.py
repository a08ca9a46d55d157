"""dmsg streams: a signed StreamRequest/Response carrying the KK handshake,
then KK transport frames on a yamux stream, presented as a Twisted transport
whose ``getPeerPK()`` is the peer's proven key."""

import time

from twisted.internet import defer, interfaces, protocol
from twisted.logger import Logger
from zope.interface import implementer

from skypty.dmsg.session import DmsgError, EnvelopeReader, object_hash, sign_object
from skypty.keys import InvalidKey
from skypty.noise import NoiseError, NoiseHandshake
from skypty.wire import types as T


@implementer(interfaces.ITransport, interfaces.IPushProducer, interfaces.IConsumer)
class KKTransport:
    """What the inner protocol sees: encrypts writes, knows the peer's key."""

    def __init__(self, stream, encoder, peer_pk, local_pk):
        self.stream = stream
        self.encoder = encoder
        self.peer_pk = peer_pk
        self.local_pk = local_pk
        self.disconnecting = False

    def write(self, data):
        if data and not self.disconnecting:
            self.stream.transport.write(self.encoder.encrypt(data))

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

    def __init__(self):
        self.inner = None
        self._decoder = None
        self._reader = EnvelopeReader()

    def _open(self, encoder, decoder, peer_pk, local_pk, inner, rest=b""):
        self._decoder = decoder
        self.inner = inner
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
        if self.inner is not None:
            self.inner.connectionLost(reason)


class DialStream(KKStream):
    """The dialing side: request out, response in, then the inner protocol."""

    def __init__(self, session, sk, src_port, dst_pk, dst_port, inner):
        super().__init__()
        self.session, self.sk = session, sk
        self.dst_pk, self.dst_port = dst_pk, dst_port
        self.src_port = src_port
        self.inner_pending = inner
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

    def dataReceived(self, data):
        if self.inner is not None:
            return self._frames(data)
        try:
            got = self._reader.take_object(data, self.session.cipher, T.StreamResponse)
            if got is None:
                return
            resp, _signed, sig, raw, rest = got
            self.dst_pk.verify(raw, sig)
            if bytes(resp.req_hash) != object_hash(self.signed):
                raise DmsgError("stream response answers another request")
            if not resp.accepted:
                raise DmsgError(f"{self.dst_pk.hex()[:16]}… refused the stream (code {resp.err_code})")
            self.hs.read_message(resp.noise_msg)
            encoder, decoder = self.hs.split()
        except (DmsgError, NoiseError, InvalidKey) as e:
            self.transport.abortConnection()
            if not self.done.called:
                self.done.errback(e)
            return
        self._open(encoder, decoder, self.dst_pk, self.sk.public_key, self.inner_pending)
        self.done.callback(self.inner)
        if rest:
            self._frames(rest)

    def connectionLost(self, reason=protocol.connectionDone):
        if not self.done.called:
            self.done.errback(DmsgError(f"{self.dst_pk.hex()[:16]}… is not reachable over dmsg "
                                        "(offline, or no shared dmsg server)"))
        super().connectionLost(reason)


class AcceptStream(KKStream):
    """The listening side: request in, response out, then a listener's protocol."""

    def __init__(self, session, sk, listeners):
        super().__init__()
        self.session, self.sk, self.listeners = session, sk, listeners

    def dataReceived(self, data):
        if self.inner is not None:
            return self._frames(data)
        try:
            got = self._reader.take_stream_request(data, self.session.cipher)
            if got is None:
                return
            req, signed, rest = got
            if req.dst_addr.pk != self.sk.public_key:
                raise DmsgError("stream request for another key")
            factory = self.listeners.get(req.dst_addr.port)
            if factory is None:
                raise DmsgError(f"nothing listens on dmsg port {req.dst_addr.port}")
            hs = NoiseHandshake("KK", False, self.sk, req.src_addr.pk)
            hs.read_message(req.noise_msg)
            resp = T.StreamResponse.cls(req_hash=list(object_hash(signed)), accepted=True,
                                        noise_msg=hs.write_message())
            self.transport.write(self.session.cipher.seal(sign_object(self.sk, resp, T.StreamResponse)))
            encoder, decoder = hs.split()
        except (DmsgError, NoiseError, InvalidKey) as e:
            self.log.warn("refused dmsg stream: {err}", err=e)
            self.transport.loseConnection()
            return
        inner = factory.buildProtocol(None)
        if inner is None:
            self.transport.loseConnection()
            return
        self._open(encoder, decoder, req.src_addr.pk, self.sk.public_key, inner, rest)



"""Noise over a Twisted transport, in the manner of twisted.protocols.tls.

``NoiseFactory`` wraps any factory: the handshake runs first (u16-framed
messages, 10 s limit), then the wrapped protocol is connected to a transport
that encrypts what it writes into frames and is fed decrypted frames.  The
peer's proven static key is ``transport.getPeerPK()``.
"""

from twisted.internet import defer, interfaces, protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

from skypty.errors import ProtocolError
from skypty.wire.netopts import enable_keepalive
from skypty.wire.noise import HandshakeFramer, NoiseError, NoiseHandshake, frame_handshake, pump_handshake
from skypty.wire.writenow import write_now

HANDSHAKE_TIMEOUT = 10.0


class HandshakeTimeout(NoiseError):
    pass


@implementer(interfaces.ITransport, interfaces.IPushProducer, interfaces.IConsumer)
class NoiseProtocol(ProtocolWrapper):
    log = Logger()

    def __init__(self, factory, wrappedProtocol):
        super().__init__(factory, wrappedProtocol)
        self.handshake = NoiseHandshake(factory.pattern, factory.initiator, factory.local_static,
                                        factory.remote_static)
        self._framer = HandshakeFramer()
        self._encoder = self._decoder = None
        self._timeout = None
        self._failed = False
        self._pending_rest = b""
        self.handshake_done = defer.Deferred()

    # -- handshake ---------------------------------------------------------------
    def makeConnection(self, transport):
        # Connect ourselves to the transport, but not the wrapped protocol yet.
        protocol.Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)

    def connectionMade(self):
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)  # small RPC replies must not wait for Nagle
        enable_keepalive(self.transport)  # a black-holed peer is noticed within about a minute
        self._timeout = self.factory.reactor.callLater(self.factory.handshake_timeout, self._timed_out)
        if self.factory.initiator:
            self.transport.write(frame_handshake(self.handshake.write_message()))

    def _timed_out(self):
        self._timeout = None
        self._fail(HandshakeTimeout("noise handshake timed out"))

    def dataReceived(self, data):
        if self._failed:
            return
        try:
            if self._decoder is None:
                self._handshake_data(data)
            else:
                frames = self._decoder.receive(data)
                if frames:
                    # One delivery per TCP read, not per 4 KiB frame: a stream
                    # parser that appends to a bytes buffer (conch's SFTP)
                    # would otherwise copy each packet ~30 times.
                    self.wrappedProtocol.dataReceived(frames[0] if len(frames) == 1 else b"".join(frames))
        except ProtocolError as e:
            self._fail(e)

    def _handshake_data(self, data):
        for reply in pump_handshake(self.handshake, self._framer, data):
            self.transport.write(reply)
        if not self.handshake.complete:
            return
        # Whatever followed the last handshake message is already transport frames.
        rest = self._framer.take_rest()
        self._handshake_complete()
        if rest and not self._failed:
            self._pending_rest = rest
            self._flush_rest()

    def _flush_rest(self):
        rest, self._pending_rest = self._pending_rest, b""
        if rest and self.wrappedProtocol is not None:
            self.dataReceived(rest)
        elif rest:
            self._pending_rest = rest  # delivered once authorize() lets the peer in

    def _handshake_complete(self):
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        self._encoder, self._decoder = self.handshake.split()
        authorize = self.factory.authorize
        if authorize is None:
            return self._start_inner()
        self.transport.pauseProducing()  # nothing is read until the peer is known
        d = defer.maybeDeferred(authorize, self.handshake.remote_static)

        def decided(ok):
            if self._failed:
                return
            if not ok:
                self.log.warn("noise peer {pk} not authorized", pk=self.handshake.remote_static.hex())
                self._failed = True
                self.transport.abortConnection()
                return
            self.transport.resumeProducing()
            self._start_inner()

        d.addCallback(decided).addErrback(lambda f: self._fail(f.value))

    def _start_inner(self):
        # The wrapped protocol is only built now: an unauthorized peer never gets one.
        self.wrappedProtocol = self.factory.wrappedFactory.buildProtocol(self._addr)
        if self.wrappedProtocol is None:
            self._failed = True
            self.transport.loseConnection()
            return
        self.wrappedProtocol.makeConnection(self)
        self.handshake_done.callback(self.wrappedProtocol)
        if self._pending_rest:
            self._flush_rest()

    def logPrefix(self):
        return "Noise"

    def _fail(self, exc):
        if self._failed:
            return
        self._failed = True
        self.log.warn("noise connection from {peer} dropped: {err}", peer=str(self.transport.getPeer()),
                      err=str(exc))
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        self.transport.abortConnection()
        self._fail_handshake(exc if isinstance(exc, Exception) else NoiseError(str(exc)))

    def _fail_handshake(self, why):
        if not self.handshake_done.called:
            self.handshake_done.errback(why)
            # Whoever waits has seen it; a server side that nobody waits on must not log it.
            self.handshake_done.addErrback(lambda _: None)

    # -- transport for the wrapped protocol -------------------------------------------
    def getPeerPK(self):
        return self.handshake.remote_static

    def write(self, data):
        if self._encoder is None or self._failed or self.disconnecting:
            return
        if data:
            write_now(self.transport, self._encoder.encrypt(data))  # now, not in the next reactor turn

    def writeSequence(self, seq):
        self.write(b"".join(seq))

    def connectionLost(self, reason):
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        self._fail_handshake(reason)
        if self.wrappedProtocol is not None:
            ProtocolWrapper.connectionLost(self, reason)
        else:
            self.factory.unregisterProtocol(self)


class NoiseFactory(WrappingFactory):
    protocol = NoiseProtocol

    def __init__(self, wrappedFactory, pattern, initiator, local_static, remote_static=None,
                 handshake_timeout=HANDSHAKE_TIMEOUT, reactor=None, authorize=None):
        super().__init__(wrappedFactory)
        if reactor is None:
            from twisted.internet import reactor
        self.pattern = pattern
        self.initiator = initiator
        self.local_static = local_static
        self.remote_static = remote_static
        self.handshake_timeout = handshake_timeout
        self.reactor = reactor
        self.authorize = authorize

    def buildProtocol(self, addr):
        proto = self.protocol(self, None)
        proto._addr = addr
        return proto


def connect_noise_xk(endpoint, local_static, remote_static, protocol_factory, reactor=None):
    """Dial *endpoint*, run XK as initiator pinning *remote_static*;
    -> Deferred[the wrapped protocol], fired once the handshake is done."""
    factory = NoiseFactory(protocol_factory, "XK", True, local_static, remote_static, reactor=reactor)
    d = endpoint.connect(factory)
    return d.addCallback(lambda noise: noise.handshake_done)

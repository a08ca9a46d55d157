"""The embedded dmsg server: accepts sessions, forwards stream requests
between the clients it knows, then splices the two yamux streams.

It checks each request as the reference does (signature by the source key,
source key = the session's key, ports non-zero) and each response (signed by
the destination, answering this request) before anything is spliced.
"""

from twisted.application import internet, service
from twisted.internet import endpoints, protocol
from twisted.logger import Logger

from skypty.dmsg.disc import DiscoveryClient, EntryKeeper, server_entry
from skypty.dmsg.session import DmsgError, DmsgSession, EnvelopeReader, object_hash
from skypty.keys import InvalidKey
from skypty.wire import types as T

MAX_SESSIONS = 2048


class ServerStream(protocol.Protocol):
    """A client's new stream: a request to forward."""

    log = Logger()

    def __init__(self, server, session):
        self.server, self.session = server, session
        self._reader = EnvelopeReader()
        self.state = "request"
        self.partner = None
        self._early = b""  # bytes after the request, held until the splice

    def dataReceived(self, data):
        if self.state == "spliced":
            self.partner.transport.write(data)
            return
        if self.state != "request":
            self._early += data
            return
        try:
            got = self._reader.take_stream_request(data, self.session.cipher)
            if got is None:
                return
            req, signed, rest = got
            if req.src_addr.pk != self.session.remote_pk:
                raise DmsgError("request source is not the session's key")
            if not req.src_addr.port or not req.dst_addr.port or req.timestamp <= 0:
                raise DmsgError("bad stream request")
        except (DmsgError, InvalidKey) as e:
            self.log.warn("dropped a stream request: {err}", err=e)
            self.transport.loseConnection()
            return
        self._early = rest
        dst = self.server.sessions.get(req.dst_addr.pk)
        if dst is None:
            self.transport.loseConnection()  # the destination has no session here
            return
        self.state = "forwarding"
        self.signed = signed
        self.dst_session = dst
        dst.open_stream(ForwardStream(self, req.dst_addr.pk))

    def forwarded(self, response_signed, forward):
        self.transport.write(self.session.cipher.seal(response_signed))
        self.partner = forward
        self.state = "spliced"
        forward.partner = self
        self.transport.registerProducer(forward.transport, True)
        forward.transport.registerProducer(self.transport, True)
        early, self._early = self._early, b""
        if early:
            forward.transport.write(early)

    def connectionLost(self, reason=protocol.connectionDone):
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.loseConnection()


class ForwardStream(protocol.Protocol):
    """The server's stream to the destination client."""

    log = Logger()

    def __init__(self, origin, dst_pk):
        self.origin, self.dst_pk = origin, dst_pk
        self._reader = EnvelopeReader()
        self.partner = None

    def connectionMade(self):
        self.transport.write(self.origin.dst_session.cipher.seal(self.origin.signed))

    def dataReceived(self, data):
        if self.partner is not None:
            self.partner.transport.write(data)
            return
        try:
            got = self._reader.take_object(data, self.origin.dst_session.cipher, T.StreamResponse)
            if got is None:
                return
            resp, signed, sig, raw, rest = got
            self.dst_pk.verify(raw, sig)
            if bytes(resp.req_hash) != object_hash(self.origin.signed):
                raise DmsgError("response for another request")
        except (DmsgError, InvalidKey) as e:
            self.log.warn("dropped a stream response: {err}", err=e)
            self.transport.loseConnection()
            self.origin.transport.loseConnection()
            return
        self.origin.forwarded(signed, self)
        if rest:
            self.origin.transport.write(rest)

    def connectionLost(self, reason=protocol.connectionDone):
        if self.partner is not None:
            self.partner.transport.loseConnection()
        elif self.origin.state == "forwarding":
            self.origin.transport.loseConnection()


class DmsgServerFactory(protocol.Factory):
    log = Logger()

    def __init__(self, reactor, sk, max_sessions=MAX_SESSIONS):
        self.reactor = reactor
        self.sk = sk
        self.max_sessions = max_sessions
        self.sessions = {}

    def buildProtocol(self, addr):
        if len(self.sessions) >= self.max_sessions:
            return None
        session = DmsgSession(False, self.sk, None, self._stream, self.reactor, on_lost=self._lost)
        session.ready.addCallback(self._ready)
        return session

    def _ready(self, session):
        old = self.sessions.get(session.remote_pk)
        self.sessions[session.remote_pk] = session
        if old is not None and old is not session:
            old.transport.loseConnection()
        self.log.info("dmsg session from {pk}", pk=session.remote_pk.hex())
        return session

    def _lost(self, session):
        if self.sessions.get(session.remote_pk) is session:
            del self.sessions[session.remote_pk]

    def _stream(self, session, stream):
        return ServerStream(self, session)

    @property
    def available(self):
        return self.max_sessions - len(self.sessions)


class DmsgServerService(service.MultiService):
    """Listen, and keep this server's entry in discovery."""

    def __init__(self, reactor, sk, listen, address, discovery_url):
        super().__init__()
        self.factory = DmsgServerFactory(reactor, sk)
        ep = endpoints.serverFromString(reactor, listen.endpoint)
        svc = internet.StreamServerEndpointService(ep, self.factory)
        svc._raiseSynchronously = True
        svc.setServiceParent(self)
        pk = sk.public_key
        self.keeper = EntryKeeper(
            DiscoveryClient(discovery_url, reactor), sk,
            lambda seq, ts: server_entry(pk, seq, ts, address, self.factory.available), reactor)

    def startService(self):
        super().startService()
        self.keeper.start()

    def stopService(self):
        self.keeper.stop()
        return super().stopService()



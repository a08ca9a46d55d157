"""The dmsg server: accepts sessions, forwards stream requests to the
destination's session, then splices the two yamux streams.

It checks each request as the reference does (signature by the source key,
source key = the session's key unless the session is a peer server's,
ports non-zero) and each response (signed by the destination, answering
this request) before anything is spliced.

The mesh: when the destination is not a client here, a request that came
from a client is forwarded one hop to the peer servers (configured, or
every other server in discovery), one after another until one answers.  A
request that came *from* a peer is never forwarded again, so nothing loops.
Sessions between servers are ordinary dmsg sessions (XK, yamux); a session
from a key this server counts as a peer may carry requests on other keys'
behalf.
"""

import random

from twisted.application import internet, service
from twisted.internet import defer, endpoints, protocol, task
from twisted.logger import Logger

from skypty.dmsg.disc import DiscoveryClient, DiscoveryError, EntryKeeper, server_entry
from skypty.dmsg.session import (
    STREAM_HANDSHAKE_TIMEOUT, DmsgError, DmsgSession, EnvelopeReader, object_hash,
)
from skypty.errors import ProtocolError
from skypty.keys import InvalidKey
from skypty.wire import types as T

MAX_SESSIONS = 2048
BRIDGE_IDLE_TIMEOUT = 300.0   # the reference closes bridges idle for 5 minutes
MAX_PEER_TRIES = 8            # peers asked for one request, one after another
MAX_RELAYED = 1024            # concurrent bridges carried for peers or through them
MAX_PEERS = 32
MAX_EARLY = 256 * 1024        # bytes a dialer may send before its stream is spliced
PEER_RETRY_MIN, PEER_RETRY_MAX = 5.0, 60.0
PEER_DISCOVERY_INTERVAL = 60.0
PING_MARKER = b"\x00\x00"


def _host_port(address):
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class Bridge:
    """Two spliced streams; closes both when no byte crossed either way for
    *idle_timeout* seconds (None: never)."""

    def __init__(self, server, origin, forward, relayed):
        self.server, self.origin, self.forward = server, origin, forward
        self.relayed = relayed
        self.reactor = server.reactor
        self.timeout = server.idle_timeout
        self.last = self.reactor.seconds()
        self._call = None
        self.closed = False
        if relayed:
            server.relayed += 1
        if self.timeout:
            self._call = self.reactor.callLater(self.timeout, self._check)

    def touch(self):
        self.last = self.reactor.seconds()

    def _check(self):
        self._call = None
        idle = self.reactor.seconds() - self.last
        if idle < self.timeout:
            self._call = self.reactor.callLater(self.timeout - idle, self._check)
            return
        self.server.log.info("closing a dmsg stream idle for {idle:.0f}s", idle=idle)
        for side in (self.origin, self.forward):
            if side.transport is not None:
                side.transport.loseConnection()
        self.stop()

    def stop(self):
        if self.closed:
            return
        self.closed = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self.relayed:
            self.server.relayed -= 1


class ServerStream(protocol.Protocol):
    """A stream a session opened to this server: a request to forward."""

    log = Logger()

    def __init__(self, server, session):
        self.server, self.session = server, session
        self._reader = EnvelopeReader()
        self.state = "request"
        self.partner = None
        self.bridge = None
        self.forward = None       # the ForwardStream being tried
        self.candidates = []      # sessions still to try
        self.via_peers = False
        self._early = b""         # bytes after the request, held until the splice
        self._deadline = None
        self._head = b""          # the first two bytes: a ping marker, or an envelope's length

    def connectionMade(self):
        self._deadline = self.server.reactor.callLater(STREAM_HANDSHAKE_TIMEOUT, self._timed_out)

    def _stop_deadline(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _timed_out(self):
        self._deadline = None
        if self.state == "request":
            self.log.info("dropped a dmsg stream: no stream request within {t:g}s", t=STREAM_HANDSHAKE_TIMEOUT)
        else:
            self.log.info("dropped a dmsg stream request: no answer within {t:g}s", t=STREAM_HANDSHAKE_TIMEOUT)
        if self.forward is not None and self.forward.transport is not None:
            self.forward.transport.abortConnection()
        self.state = "closed"
        self.transport.abortConnection()

    def dataReceived(self, data):
        if self.state == "spliced":
            self.bridge.touch()
            self.partner.transport.write(data)
            return
        if self.state != "request":
            if len(self._early) + len(data) > MAX_EARLY:
                self.refuse("too much data before the stream was answered")
                return
            self._early += data
            return
        if self._head is not None:
            # A current client checks a session with a stream that starts with
            # two zero bytes (no envelope is empty): echo them and close.
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, None
            if data[:2] == PING_MARKER:
                self.state = "closed"
                self._stop_deadline()
                self.transport.write(PING_MARKER)
                self.transport.loseConnection()
                return
        try:
            got = self._reader.take_stream_request(data, self.session.cipher)
            if got is None:
                return
            req, signed, rest = got
        except (ProtocolError, InvalidKey) as e:
            self.refuse(f"bad stream request: {e}")
            return
        except Exception as e:  # a bug must cost this stream only, and one line
            self.refuse(f"bad stream request: unexpected {type(e).__name__}: {e}")
            return
        self.state = "routing"
        self._early = rest
        self.req, self.signed = req, signed
        self.server.route(self)

    def refuse(self, why, level="warn"):
        """Refused streams are just closed (the reference sends no answer)."""
        getattr(self.log, level)("dropped a dmsg stream request: {why}", why=why)
        self.state = "closed"
        self._stop_deadline()
        self.transport.loseConnection()

    def try_next(self):
        if self.state not in ("routing", "forwarding"):
            return
        if not self.candidates:
            where = " nor at any peer server" if self.via_peers else ""
            self.refuse(f"{self.req.dst_addr.pk.hex()} is not connected here{where}", level="info")
            return
        session = self.candidates.pop(0)
        self.state = "forwarding"
        self.forward = ForwardStream(self, session)
        d = session.open_stream(self.forward)
        d.addErrback(lambda f: self.forward_failed(self.forward, f.getErrorMessage()))

    def forward_failed(self, forward, why):
        if forward is not self.forward or self.state != "forwarding":
            return
        self.log.debug("forwarding to {pk} failed: {why}", pk=forward.session.remote_pk.hex(), why=why)
        self.forward = None
        self.try_next()

    def forwarded(self, response_signed, forward):
        self._stop_deadline()
        self.transport.write(self.session.cipher.seal(response_signed))
        self.partner = forward
        self.state = "spliced"
        forward.partner = self
        relayed = self.session.is_peer or forward.session.is_peer
        self.bridge = forward.bridge = Bridge(self.server, self, forward, relayed)
        self.transport.registerProducer(forward.transport, True)
        forward.transport.registerProducer(self.transport, True)
        early, self._early = self._early, b""
        if early:
            forward.transport.write(early)

    def connectionLost(self, reason=protocol.connectionDone):
        self._stop_deadline()
        if self.bridge is not None:
            self.bridge.stop()
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.loseConnection()
        elif self.forward is not None and self.forward.transport is not None:
            self.forward.transport.abortConnection()
        self.state = "closed"


class ForwardStream(protocol.Protocol):
    """The server's stream to the destination (a client, or a peer server)."""

    log = Logger()

    def __init__(self, origin, session):
        self.origin, self.session = origin, session
        self.dst_pk = origin.req.dst_addr.pk
        self._reader = EnvelopeReader()
        self.partner = None
        self.bridge = None
        self.answered = False

    def connectionMade(self):
        self.transport.write(self.session.cipher.seal(self.origin.signed))

    def dataReceived(self, data):
        if self.partner is not None:
            self.bridge.touch()
            self.partner.transport.write(data)
            return
        if self.answered or self.origin.forward is not self:
            return
        try:
            got = self._reader.take_object(data, self.session.cipher, T.StreamResponse)
            if got is None:
                return
            resp, signed, sig, raw, rest = got
            self.dst_pk.verify(raw, sig)
            if bytes(resp.req_hash) != object_hash(self.origin.signed):
                raise DmsgError("response for another request")
        except (ProtocolError, InvalidKey) as e:
            self.log.warn("dropped a stream response: {err}", err=e)
            self.transport.abortConnection()
            self.origin.forward_failed(self, str(e))
            return
        self.answered = True
        self.origin.forwarded(signed, self)
        if rest:
            self.origin.transport.write(rest)

    def connectionLost(self, reason=protocol.connectionDone):
        if self.partner is not None:
            self.partner.transport.loseConnection()
        elif not self.answered:
            self.origin.forward_failed(self, "closed unanswered")


class PeerLink:
    """Keeps a session from this server to one peer server, redialing with
    backoff.  Streams the peer opens on it are served like any peer's."""

    log = Logger()

    def __init__(self, server, pk, address):
        self.server, self.pk, self.address = server, pk, address
        self.session = None
        self.backoff = PEER_RETRY_MIN
        self._call = None
        self._running = False
        self._failing = False

    def start(self):
        self._running = True
        self._schedule(0)

    def stop(self):
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self.session is not None and self.session.transport is not None:
            self.session.transport.loseConnection()

    def _schedule(self, delay):
        if self._running:
            self._call = self.server.reactor.callLater(delay, self._dial)

    def _dial(self):
        self._call = None
        defer.ensureDeferred(self._connect())

    async def _connect(self):
        server = self.server
        session = DmsgSession(True, server.sk, self.pk, server._stream, server.reactor, on_lost=self._lost)
        session.is_peer = True
        try:
            host, port = _host_port(self.address)
            ep = endpoints.TCP4ClientEndpoint(server.reactor, host, port, timeout=10)
            await endpoints.connectProtocol(ep, session)
            await session.ready
        except Exception as e:
            if not self._failing:
                self.log.warn("dmsg peer server {pk} at {addr} unreachable ({err}); retrying",
                              pk=self.pk.hex(), addr=self.address, err=e)
            self._failing = True
            self._schedule(self.backoff)
            self.backoff = min(self.backoff * 1.5, PEER_RETRY_MAX)
            return
        if not self._running:
            session.transport.loseConnection()
            return
        self.session = session
        self._failing = False
        self.backoff = PEER_RETRY_MIN
        self.log.info("peered with dmsg server {pk} at {addr}", pk=self.pk.hex(), addr=self.address)

    def _lost(self, session):
        if session is self.session:
            self.session = None
            self.log.info("dmsg peer session to {pk} lost; redialing", pk=self.pk.hex())
            self._schedule(PEER_RETRY_MIN)


class DmsgServerFactory(protocol.Factory):
    log = Logger()

    def __init__(self, reactor, sk, max_sessions=MAX_SESSIONS, idle_timeout=BRIDGE_IDLE_TIMEOUT, peers=()):
        self.reactor = reactor
        self.sk = sk
        self.pk = sk.public_key
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.sessions = {}
        self.peer_keys = set()
        self.links = {}  # peer pk -> PeerLink
        self.relayed = 0
        self._peering = False
        for pk, address in peers:
            self.add_peer(pk, address)

    # -- the mesh --
    def add_peer(self, pk, address):
        """Count pk as a peer server, and keep a session to it at *address*."""
        if pk == self.pk or pk in self.links or len(self.links) >= MAX_PEERS:
            return
        self.peer_keys.add(pk)
        link = self.links[pk] = PeerLink(self, pk, address)
        existing = self.sessions.get(pk)
        if existing is not None:
            existing.is_peer = True
        if self._peering:
            link.start()

    def start_peering(self):
        self._peering = True
        for link in self.links.values():
            link.start()

    def stop_peering(self):
        self._peering = False
        for link in self.links.values():
            link.stop()

    def peer_sessions(self):
        """Sessions to peer servers: the ones we dialed, then ones they dialed."""
        out = {pk: link.session for pk, link in self.links.items() if link.session is not None}
        for pk, session in self.sessions.items():
            if session.is_peer and pk not in out:
                out[pk] = session
        sessions = list(out.values())
        random.shuffle(sessions)  # spread the first tries over the peers
        return sessions

    def route(self, origin):
        """Where origin's request goes: the destination's session here, or
        (for a client's request only) the peer servers, one after another."""
        req, session = origin.req, origin.session
        dst = req.dst_addr.pk
        if req.src_addr.pk != session.remote_pk and not session.is_peer:
            return origin.refuse("request source is not the session's key")
        if dst == self.pk:
            return origin.refuse("request addressed to the server itself", level="info")
        local = self.sessions.get(dst)
        if local is not None and local is not session:
            if session.is_peer and self.relayed >= MAX_RELAYED:
                return origin.refuse("too many relayed streams")
            origin.candidates = [local]
        elif session.is_peer:
            # Hop limit: a peer's request is for our own clients only.
            return origin.refuse(f"{dst.hex()} is not connected here (not forwarding a peer's request)",
                                 level="debug")
        else:
            if self.relayed >= MAX_RELAYED:
                return origin.refuse("too many relayed streams")
            origin.via_peers = True
            origin.candidates = [s for s in self.peer_sessions()
                                 if s.remote_pk != session.remote_pk][:MAX_PEER_TRIES]
        origin.try_next()

    # -- sessions --
    def buildProtocol(self, addr):
        if len(self.sessions) >= self.max_sessions:
            return None
        session = DmsgSession(False, self.sk, None, self._stream, self.reactor, on_lost=self._lost)
        session.ready.addCallback(self._ready)
        return session

    def _ready(self, session):
        session.is_peer = session.remote_pk in self.peer_keys
        old = self.sessions.get(session.remote_pk)
        self.sessions[session.remote_pk] = session
        if old is not None and old is not session:
            old.transport.loseConnection()
        kind = "peer server" if session.is_peer else "dmsg session"
        self.log.info("{kind} from {pk}", kind=kind, pk=session.remote_pk.hex())
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
    """Listen, keep this server's entry in discovery, and keep the mesh.

    *peers*: (pk, "host:port") pairs to peer with; *discover_peers*: also
    peer with every other server discovery lists (as the reference does)."""

    log = Logger()

    def __init__(self, reactor, sk, listen, address, discovery_url, peers=(), discover_peers=False,
                 idle_timeout=BRIDGE_IDLE_TIMEOUT):
        super().__init__()
        self.reactor = reactor
        self.factory = DmsgServerFactory(reactor, sk, idle_timeout=idle_timeout, peers=peers)
        ep = endpoints.serverFromString(reactor, listen.endpoint)
        svc = internet.StreamServerEndpointService(ep, self.factory)
        svc._raiseSynchronously = True
        svc.setServiceParent(self)
        pk = sk.public_key
        self.discovery = DiscoveryClient(discovery_url, reactor)
        self.keeper = EntryKeeper(
            self.discovery, sk,
            lambda seq, ts: server_entry(pk, seq, ts, address, self.factory.available), reactor)
        self.discover_peers = discover_peers
        self._discovery_loop = None
        self._started_line = (f"dmsg server {pk.hex()} listening on {listen}, advertised as {address}, "
                              f"registering at {discovery_url}")

    def startService(self):
        super().startService()
        self.log.info("{line}", line=self._started_line)
        self.keeper.start()
        self.factory.start_peering()
        if self.discover_peers:
            self._discovery_loop = task.LoopingCall(self._find_peers)
            self._discovery_loop.clock = self.reactor
            self._discovery_loop.start(PEER_DISCOVERY_INTERVAL, now=True)

    def stopService(self):
        self.keeper.stop()
        if self._discovery_loop is not None and self._discovery_loop.running:
            self._discovery_loop.stop()
        self.factory.stop_peering()
        return super().stopService()

    @defer.inlineCallbacks
    def _find_peers(self):
        try:
            entries = yield self.discovery.all_servers()
        except DiscoveryError:
            return  # the entry keeper already says discovery is down
        for entry in entries:
            self.factory.add_peer(entry.static, entry.server.address)

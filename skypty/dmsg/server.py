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

A hostile network (issue #25) and a mixed mesh (issue #22):

* a peer's hop gets ``PEER_HOP_TIMEOUT``, not the whole 5 s: a peer that
  neither answers nor closes the stream (a reference server that will not
  relay for us: it logs ``dmsg error 302`` and keeps the stream open) costs
  one short wait, and is then skipped for ``SILENT_PEER_COOLDOWN``; a peer
  that closes the stream (a current reference server's "not here") is
  passed over at once;
* peer slots go to servers that answer: a discovered peer that failed
  ``PEER_DEAD_AFTER`` dials in a row gives its slot to the next candidate
  discovery lists, and a discovered peer gone from discovery (and not
  connected) is dropped;
  so signed entries pointing nowhere cannot crowd out live servers
  (configured ``--peer`` links are kept whatever happens);
* relayed streams are charged when they are routed, to the source key
  (``MAX_RELAYED_PER_CLIENT``) and, for a peer's requests, to the peer
  (``MAX_RELAYED_PER_PEER``), so no one client holds the whole
  ``MAX_RELAYED``.
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
MAX_RELAYED_PER_CLIENT = 64  # ... of which one source key may hold
MAX_RELAYED_PER_PEER = MAX_RELAYED // 2  # ... and one peer server's requests
PEER_RETRY_MIN, PEER_RETRY_MAX = 5.0, 60.0
PEER_DISCOVERY_INTERVAL = 60.0
PEER_HOP_TIMEOUT = 1.5        # a peer server answers for its client in milliseconds
SILENT_PEER_COOLDOWN = 600.0  # a peer that let a forward hang is skipped this long
PEER_DEAD_AFTER = 3           # failed dials in a row before a discovered peer's slot is given away
EVICTED_COOLDOWN = 600.0      # a peer whose slot was given away is not taken back before this
MAX_REMEMBERED = 4096
PING_MARKER = b"\x00\x00"


def _host_port(address):
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class Bridge:
    """Two spliced streams; closes both when no byte crossed either way for
    *idle_timeout* seconds (None: never)."""

    def __init__(self, server, origin, forward):
        self.server, self.origin, self.forward = server, origin, forward
        self.reactor = server.reactor
        self.timeout = server.idle_timeout
        self.last = self.reactor.seconds()
        self._call = None
        self.closed = False
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
        self.charges = ()         # relay shares this stream holds (released when it closes)
        self._hop = None          # the current peer hop's deadline
        self._early = b""         # bytes after the request, held until the splice
        self._deadline = None
        self._head = b""          # the first two bytes: a ping marker, or an envelope's length

    def connectionMade(self):
        self._deadline = self.server.reactor.callLater(STREAM_HANDSHAKE_TIMEOUT, self._timed_out)

    def _stop_deadline(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self._stop_hop()

    def _stop_hop(self):
        if self._hop is not None and self._hop.active():
            self._hop.cancel()
        self._hop = None

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
        forward = self.forward = ForwardStream(self, session)
        if self.via_peers:
            self._hop = self.server.reactor.callLater(PEER_HOP_TIMEOUT, self._hop_timed_out, forward)
        d = session.open_stream(forward)
        d.addErrback(lambda f: self.forward_failed(forward, f.getErrorMessage()))

    def _hop_timed_out(self, forward):
        self._hop = None
        if forward is not self.forward or self.state != "forwarding":
            return
        self.server.peer_silent(forward.session.remote_pk)
        self.forward_failed(forward, f"no answer within {PEER_HOP_TIMEOUT:g}s")
        if forward.transport is not None:
            forward.transport.abortConnection()

    def forward_failed(self, forward, why):
        if forward is not self.forward or self.state != "forwarding":
            return
        self._stop_hop()
        self.log.debug("forwarding to {pk} failed: {why}", pk=forward.session.remote_pk.hex(), why=why)
        self.forward = None
        self.try_next()

    def forwarded(self, response_signed, forward):
        self._stop_deadline()
        if self.via_peers:
            self.server.peer_answered(forward.session.remote_pk)
        self.transport.write(self.session.cipher.seal(response_signed))
        self.partner = forward
        self.state = "spliced"
        forward.partner = self
        self.bridge = forward.bridge = Bridge(self.server, self, forward)
        self.transport.registerProducer(forward.transport, True)
        forward.transport.registerProducer(self.transport, True)
        early, self._early = self._early, b""
        if early:
            forward.transport.write(early)

    def connectionLost(self, reason=protocol.connectionDone):
        self._stop_deadline()
        self.server.release(self)
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
        self.pinned = False   # configured (--peer): never given away
        self.failures = 0     # dials failed in a row
        self.ever_up = False

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
            self.failures += 1
            if self.failures == PEER_DEAD_AFTER:
                server.peer_died(self)
            self._schedule(self.backoff)
            self.backoff = min(self.backoff * 1.5, PEER_RETRY_MAX)
            return
        if not self._running:
            session.transport.loseConnection()
            return
        if session.transport is None or session.transport.disconnected:
            self._failing, self.failures = True, self.failures + 1
            self._schedule(self.backoff)
            return
        self.session = session
        self._failing = False
        self.failures = 0
        self.ever_up = True
        self.backoff = PEER_RETRY_MIN
        self.log.info("peered with dmsg server {pk} at {addr}", pk=self.pk.hex(), addr=self.address)

    def _lost(self, session):
        if session is self.session:
            self.session = None
            self.log.info("dmsg peer session to {pk} lost; redialing", pk=self.pk.hex())
            self._schedule(PEER_RETRY_MIN)

    @property
    def dead(self):
        """Not connected, and the last PEER_DEAD_AFTER dials failed."""
        return self.session is None and self.failures >= PEER_DEAD_AFTER


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
        self.relayed_by = {}  # ("client" | "peer", pk) -> relayed streams charged to it
        self.silent = {}      # peer pk -> until when it is skipped for forwards
        self.answered = set()  # peers that carried a forward for us
        self.evicted = {}     # peer pk -> when its slot was given away
        self.discovered = {}  # pk -> address, as discovery last listed the servers
        self._peering = False
        for pk, address in peers:
            self.add_peer(pk, address, pinned=True)

    # -- the mesh --
    def add_peer(self, pk, address, pinned=False):
        """Count pk as a peer server, and keep a session to it at *address*.
        -> whether it has a link now.  A full mesh gives a dead discovered
        peer's slot to a new one; configured (pinned) peers always fit."""
        if pk == self.pk:
            return False
        link = self.links.get(pk)
        if link is not None:
            link.pinned = link.pinned or pinned
            if link.address != address and not link.pinned:
                link.address = address  # the server moved: dial it there from now on
            return True
        if not pinned:
            gone = self.evicted.get(pk)
            if gone is not None and self.reactor.seconds() - gone < EVICTED_COOLDOWN:
                return False
            if len(self.links) >= MAX_PEERS and not self._give_away_a_dead_slot():
                return False
        self.peer_keys.add(pk)
        link = self.links[pk] = PeerLink(self, pk, address)
        link.pinned = pinned
        existing = self.sessions.get(pk)
        if existing is not None:
            existing.is_peer = True
        if self._peering:
            link.start()
        return True

    def _give_away_a_dead_slot(self):
        # (A peer we cannot dial but that keeps a session to us is alive.)
        dead = [link for link in self.links.values()
                if not link.pinned and link.dead and link.pk not in self.sessions]
        if not dead:
            return False
        victim = max(dead, key=lambda link: (not link.ever_up, link.failures))
        self.drop_peer(victim.pk, cooldown=True)
        self.log.info("gave dmsg peer slot of {pk} ({addr}, {n} failed dials) to another server",
                      pk=victim.pk.hex(), addr=victim.address, n=victim.failures)
        return True

    def drop_peer(self, pk, cooldown=False):
        """Forget a peer; with *cooldown* (it was dead), discovery's listing of
        it is ignored for EVICTED_COOLDOWN seconds."""
        link = self.links.pop(pk, None)
        if link is None:
            return
        link.stop()
        self.peer_keys.discard(pk)
        self.answered.discard(pk)
        session = self.sessions.get(pk)
        if session is not None:
            session.is_peer = False
        if not cooldown:
            return
        self.evicted[pk] = self.reactor.seconds()
        if len(self.evicted) > MAX_REMEMBERED:
            del self.evicted[next(iter(self.evicted))]

    def update_discovered(self, servers):
        """*servers*: {pk: address} as discovery lists them now.  Discovered
        peers no longer listed and not connected are dropped; new ones get
        free or dead slots, servers never given away before first."""
        self.discovered = dict(servers)
        # A live peer stays until its session ends (a discovery that restarts
        # empty must not cut the streams it carries); a dead unlisted one goes.
        for pk in [pk for pk, link in self.links.items()
                   if not link.pinned and pk not in servers and link.session is None]:
            self.drop_peer(pk)
        for pk, link in self.links.items():
            if not link.pinned and pk in servers:
                link.address = servers[pk]  # the server moved: dial it there from now on
        fresh = [pk for pk in servers if pk not in self.links]
        random.shuffle(fresh)
        fresh.sort(key=lambda pk: pk in self.evicted)
        for pk in fresh:
            self.add_peer(pk, servers[pk])

    def peer_died(self, link):
        """A discovered peer keeps failing: if discovery listed a server we
        have no slot for, give it this one now rather than at the next round."""
        if not link.pinned and any(pk not in self.links and pk != self.pk for pk in self.discovered):
            self.reactor.callLater(0, self.update_discovered, self.discovered)

    def peer_silent(self, pk):
        self.silent[pk] = self.reactor.seconds() + SILENT_PEER_COOLDOWN
        self.answered.discard(pk)
        if len(self.silent) > MAX_REMEMBERED:
            del self.silent[next(iter(self.silent))]
        self.log.info("dmsg peer server {pk} let a forwarded request hang; not forwarding to it for "
                      "{t:.0f}s (a server that does not relay for us)", pk=pk.hex(), t=SILENT_PEER_COOLDOWN)

    def peer_answered(self, pk):
        self.silent.pop(pk, None)
        self.answered.add(pk)

    # -- relay shares --
    def charge(self, origin, keys):
        """Charge a relayed stream to *keys*; -> None, or why not."""
        if self.relayed >= MAX_RELAYED:
            return "too many relayed streams"
        for key in keys:
            limit = MAX_RELAYED_PER_CLIENT if key[0] == "client" else MAX_RELAYED_PER_PEER
            if self.relayed_by.get(key, 0) >= limit:
                return f"{key[1].hex()} holds its share of relayed streams ({limit})"
        self.relayed += 1
        for key in keys:
            self.relayed_by[key] = self.relayed_by.get(key, 0) + 1
        origin.charges = tuple(keys) or (None,)
        return None

    def release(self, origin):
        charges, origin.charges = origin.charges, ()
        if not charges:
            return
        self.relayed -= 1
        for key in charges:
            if key is None:
                continue
            left = self.relayed_by[key] - 1
            if left:
                self.relayed_by[key] = left
            else:
                del self.relayed_by[key]

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
        now = self.reactor.seconds()
        for pk in [pk for pk, until in self.silent.items() if until <= now]:
            del self.silent[pk]
        # Peers that carried forwards before go first; peers that let one hang, not at all.
        sessions = [s for s in sessions if s.remote_pk not in self.silent]
        sessions.sort(key=lambda s: s.remote_pk not in self.answered)
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
        src = ("client", req.src_addr.pk)
        # A client's stream to itself is bridged back over its own session:
        # a visor checks that it can reach itself and exits if it cannot.
        if local is not None and not (local is session and session.is_peer):
            if session.is_peer:
                why = self.charge(origin, [src, ("peer", session.remote_pk)])
                if why is not None:
                    return origin.refuse(why)
            origin.candidates = [local]
        elif session.is_peer:
            # Hop limit: a peer's request is for our own clients only.
            return origin.refuse(f"{dst.hex()} is not connected here (not forwarding a peer's request)",
                                 level="debug")
        else:
            why = self.charge(origin, [src])
            if why is not None:
                return origin.refuse(why)
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
        self.factory.update_discovered({entry.static: entry.server.address for entry in entries})

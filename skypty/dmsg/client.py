"""The host's dmsg client: sessions to dmsg servers, its discovery entry,
listening on dmsg ports, and dialing other hosts by public key.

When discovery is down at start (or lists no servers yet) the host still
serves its control socket and TCP port; the client retries with
exponential backoff (1 s .. 60 s), logging once per change of state rather
than once per retry, and joins once it can.  A session lost with its link
is reconnected straight to the same server, once a second (``RECONNECT_TRY``),
without asking discovery (likely behind the same dead link), and a dial
waits for that attempt rather than failing; a dialled peer's entry is
reused, stale, while discovery is out of reach.

A dial tries, as the current reference does: the sessions to servers the
peer also uses; then every other session (a current server forwards the
request one hop to a peer server that has the destination); then a new
session to one of the peer's own servers.

A failed dial says what happened (issue #26): the peer refused because
nothing listens on the port (``refused``), refused for another reason
(``peer-error``, with the reference's code in words), a server took the
request and nobody answered in time (``timeout``), or every server closed
it unanswered, i.e. none has a session to the peer (``no-answer``).
"""

import itertools
import random

from twisted.application import service
from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger

from skypty.dmsg.disc import DiscoveryClient, DiscoveryError, EntryKeeper, EntryNotFound, client_entry
from skypty.dmsg.errors import (
    DialError, DialTimeout, DiscoveryUnavailable, NoAnswer, NoSharedServer, NotInDiscovery, NotWhitelisted,
    PeerRefused, StreamRefused, stream_error,
)
from skypty.dmsg.session import STREAM_HANDSHAKE_TIMEOUT, DmsgSession
from skypty.dmsg.stream import NO_LISTENER, AcceptStream, DialStream, StreamRefusedError
from skypty.wire import requestline

RETRY_MIN, RETRY_MAX = 1.0, 60.0
CHECK_INTERVAL = 30.0   # how often a satisfied client looks again (a lost session kicks at once)
# Per attempt: the server's 5 s handshake window plus the round trips.
ATTEMPT_TIMEOUT = STREAM_HANDSHAKE_TIMEOUT + 3.0
SESSION_PROBE_TIMEOUT = 2.0  # a dial's session must answer a ping within this (any byte counts)
DIAL_WINDOW = 2 * 1024 * 1024  # what our dialled streams let the peer send ahead: ~1 BDP at 200 ms, 80 Mbit/s
MAX_EXISTING_TRIES = 8   # existing sessions tried for one dial
PEER_ENTRY_TTL = 30.0    # how long a dialled peer's discovery entry is reused
STALE_ENTRY_TTL = 3600.0  # ... and, while discovery is out of reach, an older one (better than failing)
# A session lost with its link is reconnected to the same server directly
# (not through discovery, which is likely behind the same dead link), one
# short TCP attempt a second: a fresh SYN each time instead of TCP's own
# backoff (1, 3, 7, 15 s), so the session is back about a second after the
# link is, and the shells its streams carried can resume.
RECONNECT_TRY = 1.0      # seconds per attempt (and between attempts)
RECONNECT_FOR = 300.0    # for this long after the loss; then the usual upkeep (discovery, backoff)
LOST_SESSION_WAIT = 20.0  # a dial waits this long for a lost session to come back (the link to return)
MAX_PEER_ENTRIES = 4096
MAX_NEW_SESSIONS = 2     # new sessions to the peer's servers for one dial
DIAL_TIMEOUT = ATTEMPT_TIMEOUT  # the old name
EPHEMERAL_PORTS = (49152, 65535)


def _alive(session):
    """A session that is up and not being closed (a failed probe aborts it;
    it leaves ``sessions`` a moment later)."""
    transport = getattr(session, "transport", None)
    return transport is not None and not transport.disconnecting and not getattr(transport, "disconnected", False)


def _wait(d):
    """A Deferred that fires with *d*'s result, leaving *d* to its other waiters."""
    mine = defer.Deferred()
    d.addBoth(lambda result: (mine.callback(result), result)[1])
    return mine


class _Dial(DialStream):
    """A DialStream that remembers whether the request ran out of time: we
    gave up waiting, or the server closed it only when its own handshake
    window had passed (nobody answered it there either).  A close well
    inside that window is a server saying "not here"."""

    timed_out = False
    _sent_at = None

    def connectionMade(self):
        self._sent_at = self.reactor.seconds() if self.reactor is not None else None
        super().connectionMade()

    def _timed_out(self):
        self.timed_out = True
        super()._timed_out()

    def connectionLost(self, reason=protocol.connectionDone):
        if not self.done.called and self._sent_at is not None:
            waited = self.reactor.seconds() - self._sent_at
            self.timed_out = waited >= 0.9 * STREAM_HANDSHAKE_TIMEOUT
        super().connectionLost(reason)


class _Failures(list):
    """Why each attempt of one dial failed; ``timeouts`` counts the waits."""

    timeouts = 0


def _host_port(address):
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _ephemeral_ports():
    low, high = EPHEMERAL_PORTS
    return itertools.cycle(range(low + 1, high + 1))


class DmsgClientService(service.Service):
    log = Logger()

    def __init__(self, reactor, config):
        self.reactor = reactor
        self.sk = config.sk
        self.pk = config.pk
        self.wanted = config.dmsg.sessions_count
        self.preferred = list(config.dmsg.servers)
        self.discovery_url = config.dmsg.discovery
        self.discovery = DiscoveryClient(config.dmsg.discovery, reactor)
        self.sessions = {}  # server pk -> DmsgSession
        self.listeners = {}  # port -> factory
        self._ports = _ephemeral_ports()
        self._connecting = {}  # server pk -> Deferred firing (with None or why) when that attempt ends
        self._peer_entries = {}  # pk -> (entry, fetched at): see _peer_entry
        self._server_addresses = {}  # server pk -> "host:port" last seen (discovery or a session)
        self._lost_servers = {}  # server pk -> when its session was lost (see RECONNECT_TRY)
        self._reconnect_calls = {}  # server pk -> the next direct attempt
        self._session_waiters = {}  # server pk -> [Deferred]: dials waiting for a lost session to come back
        self._retry = RETRY_MIN
        self._call = None
        self._busy = False
        self.state = None  # what the last maintenance round found; logged when it changes
        self.keeper = EntryKeeper(self.discovery, self.sk,
                                  lambda seq, ts: client_entry(self.pk, seq, ts, list(self.sessions)), reactor)

    # -- lifecycle --
    def startService(self):
        super().startService()
        self._schedule(0)

    def stopService(self):
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        for call in self._reconnect_calls.values():
            if call.active():
                call.cancel()
        self._reconnect_calls.clear()
        for waiters in self._session_waiters.values():
            for waiter in waiters:
                waiter.callback(None)
        self._session_waiters.clear()
        self.keeper.stop()
        for session in list(self.sessions.values()):
            session.transport.loseConnection()

    def _schedule(self, delay):
        if not self.running:
            return
        if self._call is not None and self._call.active():
            if self._call.getTime() <= self.reactor.seconds() + delay:
                return  # already due sooner
            self._call.cancel()
        self._call = self.reactor.callLater(delay, self._tick)

    def _kick(self):
        """Something changed (a session was lost): look again now."""
        self._retry = RETRY_MIN
        self._schedule(0)

    def _tick(self):
        self._call = None
        if self._busy:
            return self._schedule(RETRY_MIN)
        self._busy = True
        d = self._maintain()
        d.addErrback(lambda f: self.log.failure("dmsg session upkeep failed", f) or self._failed())
        d.addBoth(self._done)

    def _done(self, delay):
        self._busy = False
        self._schedule(delay if isinstance(delay, (int, float)) else self._failed())

    def _failed(self):
        delay, self._retry = self._retry, min(self._retry * 2, RETRY_MAX)
        return delay

    def _enter(self, state, message, **kw):
        """Log *message* only when the state changes (not on every retry)."""
        if state != self.state:
            self.state = state
            if message:
                # No server yet is normal for a few seconds after start (an
                # embedded server registers just after us): not a warning.
                (self.log.info if state in ("ok", "empty") else self.log.warn)(message, **kw)

    @defer.inlineCallbacks
    def _maintain(self):
        """One round; -> seconds until the next."""
        if len(self.sessions) >= self.wanted:
            self._enter("ok", None)
            self._retry = RETRY_MIN
            return CHECK_INTERVAL
        try:
            servers = yield self.discovery.available_servers()
        except DiscoveryError as e:
            self._enter("unavailable", "dmsg discovery unavailable: {err}; retrying with backoff "
                        "(up to {max:.0f}s)", err=e, max=RETRY_MAX)
            return self._failed()
        for e in servers:
            if e.server is not None and e.server.address:
                self._remember_server(e.static, e.server.address)
        candidates = [e for e in servers if e.static not in self.sessions and e.static not in self._connecting]
        if not candidates:
            if self.sessions:
                self._enter("ok", None)  # fewer servers exist than we would like: fine
            else:
                self._enter("empty", "dmsg discovery at {url} lists no dmsg servers yet; waiting for one",
                            url=self.discovery_url)
            return self._failed()
        candidates.sort(key=lambda e: (e.static not in self.preferred, random.random()))
        errors = []
        for entry in candidates[: self.wanted - len(self.sessions)]:
            err = yield self._connect(entry.static, entry.server.address)
            if err is not None:
                errors.append(f"{entry.server.address}: {err}")
        if errors and not self.sessions:
            self._enter("unreachable", "no dmsg server reachable ({errs}); retrying with backoff",
                        errs="; ".join(errors))
            return self._failed()
        self._enter("ok", None)
        self._retry = RETRY_MIN
        return RETRY_MIN if len(self.sessions) < self.wanted else CHECK_INTERVAL

    def _remember_server(self, pk, address):
        if pk not in self._server_addresses and len(self._server_addresses) >= MAX_PEER_ENTRIES:
            self._server_addresses.clear()
        self._server_addresses[pk] = address

    def _connect(self, server_pk, address, timeout=10):
        """Open a session to a server; -> Deferred[None, or why it failed].
        A dial that needs the same server meanwhile waits for this attempt."""
        done = defer.Deferred()
        self._connecting[server_pk] = done
        d = self._open_session(server_pk, address, timeout)

        def finished(result):
            if self._connecting.get(server_pk) is done:
                del self._connecting[server_pk]
            done.callback(result)
            return result

        return d.addBoth(finished)

    @defer.inlineCallbacks
    def _open_session(self, server_pk, address, timeout):
        try:
            host, port = _host_port(address)
            session = DmsgSession(True, self.sk, server_pk, self._incoming, self.reactor, on_lost=self._lost)
            ep = endpoints.TCP4ClientEndpoint(self.reactor, host, port, timeout=timeout)
            yield endpoints.connectProtocol(ep, session)
            yield session.ready  # fires once the handshake's last message has left alone (session.SETTLE_MIN)
            if session.transport is None or session.transport.disconnected:
                return "the server closed the session right after the handshake"
            self.sessions[server_pk] = session
            self._remember_server(server_pk, address)
            self._lost_servers.pop(server_pk, None)
            for waiter in self._session_waiters.pop(server_pk, []):
                waiter.callback(None)
            self.log.info("dmsg session to server {pk} at {addr}", pk=server_pk.hex(), addr=address)
            if not self.keeper._running:
                self.keeper.start()
            else:
                self.keeper.update_now()
            return None
        except Exception as e:
            self.log.debug("dmsg server {addr} unreachable: {err}", addr=address, err=e)
            return str(e) or type(e).__name__

    def _lost(self, session):
        for pk, s in list(self.sessions.items()):
            if s is session:
                del self.sessions[pk]
                if not self.running:
                    self.log.info("dmsg session to {pk} closed", pk=pk.hex())
                    continue
                self.log.warn("dmsg session to {pk} lost; reconnecting", pk=pk.hex())
                self._lost_servers[pk] = self.reactor.seconds()
                self._reconnect_lost(pk)
                self.keeper.update_now()
                self._kick()

    def _session_back(self, pk, timeout):
        """-> Deferred firing when a session to *pk* is up, or after *timeout* seconds."""
        d = defer.Deferred()
        waiters = self._session_waiters.setdefault(pk, [])
        waiters.append(d)

        def expire():
            if not d.called:
                waiters.remove(d)
                d.callback(None)

        call = self.reactor.callLater(timeout, expire)
        d.addBoth(lambda result: (call.active() and call.cancel(), result)[1])
        return d

    def _reconnect_lost(self, pk):
        """One direct attempt at a lost server, then the next in RECONNECT_TRY
        (while we have fewer sessions than wanted, for RECONNECT_FOR)."""
        self._reconnect_calls.pop(pk, None)
        at = self._lost_servers.get(pk)
        if (at is None or not self.running or pk in self.sessions or len(self.sessions) >= self.wanted
                or self.reactor.seconds() - at > RECONNECT_FOR or pk not in self._server_addresses):
            self._lost_servers.pop(pk, None)
            return
        if pk not in self._connecting:
            self._connect(pk, self._server_addresses[pk], timeout=RECONNECT_TRY)
        self._reconnect_calls[pk] = self.reactor.callLater(RECONNECT_TRY, self._reconnect_lost, pk)

    # -- listening --
    def listen(self, port, factory):
        self.listeners[port] = factory

    def _incoming(self, session, stream):
        return AcceptStream(session, self.sk, self.listeners)

    # -- dialing --
    @defer.inlineCallbacks
    def dial(self, pk, port, inner):
        """-> Deferred[inner], connected over a KK stream to pk:port."""
        entry, cached = yield self._peer_entry(pk)
        try:
            result = yield self._dial_entry(entry, pk, port, inner)
        except (NoSharedServer, NoAnswer):
            if not cached:
                raise
            # The peer may have moved to other servers since we looked: look again
            # (the old entry stays the answer while discovery is out of reach).
            fresh, _cached = yield self._peer_entry(pk, refresh=True)
            if fresh is entry:
                raise
            result = yield self._dial_entry(fresh, pk, port, inner)
        return result

    @defer.inlineCallbacks
    def _peer_entry(self, pk, refresh=False):
        """-> (the peer's discovery entry, whether it came from the cache).
        Entries are kept PEER_ENTRY_TTL seconds: a burst of execs to one peer
        costs one discovery round trip, not one each."""
        now = self.reactor.seconds()
        hit = self._peer_entries.get(pk)
        if hit is not None and now - hit[1] < PEER_ENTRY_TTL and not refresh:
            return hit[0], True
        try:
            entry = yield self.discovery.get_entry(pk)
        except EntryNotFound:
            self._peer_entries.pop(pk, None)
            raise NotInDiscovery(f"{pk.hex()[:16]}… is not in dmsg discovery (offline?)") from None
        except DiscoveryError as e:
            if hit is not None and now - hit[1] < STALE_ENTRY_TTL:
                return hit[0], True  # discovery is out of reach (our link?): the peer likely has not moved
            raise DiscoveryUnavailable(f"dmsg discovery unavailable: {e}") from None
        if len(self._peer_entries) >= MAX_PEER_ENTRIES:
            self._peer_entries.clear()
        self._peer_entries[pk] = (entry, now)
        return entry, False

    @defer.inlineCallbacks
    def _dial_entry(self, entry, pk, port, inner):
        delegated = list(entry.client.delegated_servers) if entry.client else []
        shared = [self.sessions[s] for s in delegated if _alive(self.sessions.get(s))]
        others = [s for k, s in self.sessions.items() if k not in delegated and _alive(s)]
        random.shuffle(others)
        tried, failures = 0, _Failures()
        for session in (shared + others)[:MAX_EXISTING_TRIES]:
            tried += 1
            result = yield self._attempt(session, pk, port, inner, failures)
            if result is not None:
                return result
        # Last resort: a session of our own to one of the peer's servers (or
        # the one just lost with its link, once it is back).
        for server_pk in [s for s in delegated if not _alive(self.sessions.get(s))][:MAX_NEW_SESSIONS]:
            session = yield self._session_to(server_pk, failures)
            if session is None:
                continue
            tried += 1
            result = yield self._attempt(session, pk, port, inner, failures)
            if result is not None:
                return result
        if not tried:
            raise NoSharedServer(f"{pk.hex()} shares no dmsg server with this host, and none of its "
                                 "servers could be reached" + (f" ({'; '.join(failures)})" if failures else ""))
        if failures.timeouts:
            raise DialTimeout("a dmsg server took the request and nobody answered it: "
                              + "; ".join(failures[-3:]))
        raise NoAnswer(f"{pk.hex()} is not reachable over dmsg (no server we reach has a session to it): "
                       + "; ".join(failures[-3:]))

    @defer.inlineCallbacks
    def _attempt(self, session, pk, port, inner, failures):
        """One stream request through one session; -> inner, or None (failure noted)."""
        stream = _Dial(session, self.sk, next(self._ports), pk, port, inner, timeout=ATTEMPT_TIMEOUT)
        probe = getattr(getattr(session, "yamux", None), "probe", None)
        if probe is not None:
            probe(SESSION_PROBE_TIMEOUT)  # a session whose path died fails this dial at once, not in 8 s
        try:
            yield session.open_stream(stream, window=DIAL_WINDOW)
            result = yield stream.done
        except StreamRefusedError as e:
            # The peer itself answered no (signed): another server will not change that.
            if e.code == NO_LISTENER:
                raise StreamRefused(f"{pk.hex()} refused the stream: nothing listens on its dmsg port "
                                    f"{port}") from None
            raise PeerRefused(f"{pk.hex()} refused the stream on dmsg port {port}: "
                              f"{stream_error(e.code)}") from None
        except Exception as e:
            if stream.timed_out:
                failures.timeouts += 1
                why = "no answer in time"
            elif "unanswered" in str(e):
                why = "closed unanswered (not connected there)"
            else:
                why = str(e).replace(pk.hex(), "the peer")
            failures.append(f"via {session.remote_pk.hex()[:16]}…: {why}")
            return None
        return result

    @defer.inlineCallbacks
    def _session_to(self, server_pk, failures):
        if _alive(self.sessions.get(server_pk)):
            return self.sessions[server_pk]
        if server_pk in self.sessions or server_pk in self._lost_servers and server_pk in self._reconnect_calls:
            # A lost session being reconnected once a second: the link is likely
            # down and will be back; wait for it (bounded) instead of failing now.
            yield self._session_back(server_pk, LOST_SESSION_WAIT)
            if not _alive(self.sessions.get(server_pk)):
                failures.append(f"server {server_pk.hex()[:16]}…: not back within {LOST_SESSION_WAIT:.0f}s")
            return self.sessions.get(server_pk) if _alive(self.sessions.get(server_pk)) else None
        if server_pk in self._connecting:  # being connected: wait for that attempt
            err = yield _wait(self._connecting[server_pk])
            if server_pk not in self.sessions:
                failures.append(f"server {server_pk.hex()[:16]}…: {err or 'not connected'}")
            return self.sessions.get(server_pk)
        address = self._server_addresses.get(server_pk)
        if address is None:
            try:
                entry = yield self.discovery.get_entry(server_pk)
            except DiscoveryError as e:
                failures.append(f"server {server_pk.hex()[:16]}…: {e}")
                return None
            if entry.server is None or not entry.server.address:
                failures.append(f"server {server_pk.hex()[:16]}…: no server entry")
                return None
            address = entry.server.address
        err = yield self._connect(server_pk, address, timeout=RECONNECT_TRY if server_pk in self._lost_servers else 10)
        if err is not None and address is not None and server_pk not in self._lost_servers:
            self._server_addresses.pop(server_pk, None)  # it may have moved: ask discovery next time
        if err is not None:
            failures.append(f"server {address}: {err}")
        return self.sessions.get(server_pk)

    @defer.inlineCallbacks
    def visible_peers(self):
        try:
            keys = yield self.discovery.entries()
        except DiscoveryError:
            return []
        from skypty.keys import InvalidKey, PublicKey

        out = []
        for k in keys:
            try:
                pk = PublicKey.from_hex(k)
            except InvalidKey:
                continue
            if pk != self.pk and pk not in self.sessions:
                out.append(pk)
        return out


class RequestedService(protocol.Protocol):
    """Sends a request line on a fresh stream; ``accepted`` fires on 0x00."""

    def __init__(self, uri, own_pk=None, peer_pk=None):
        self.uri = uri
        self.own_pk, self.peer_pk = own_pk, peer_pk
        self.accepted = defer.Deferred()
        self.sink = None
        self._early = []

    def connectionMade(self):
        self.transport.write(requestline.encode_request(self.uri))

    def dataReceived(self, data):
        if not self.accepted.called:
            if data[:1] != requestline.ACCEPT:
                self.accepted.errback(self._refusal())
                self.transport.loseConnection()
                return
            data = data[1:]
            self.accepted.callback(self)
        if data:
            if self.sink is None:
                self._early.append(data)
            else:
                self.sink(data)

    def _peer(self):
        return self.peer_pk.hex() if self.peer_pk is not None else "the remote host"

    def _refusal(self):
        own = self.own_pk.hex() if self.own_pk is not None else "this host's key"
        return NotWhitelisted(f"not authorized: host {self._peer()} does not whitelist {own}")

    def attach(self, sink, on_lost):
        self.sink, self.on_lost = sink, on_lost
        for data in self._early:
            sink(data)
        self._early = []

    def connectionLost(self, reason=protocol.connectionDone):
        if not self.accepted.called:
            # The stream was accepted, then closed before any answer: a host
            # that cannot serve the request (a reference proxy's bare close).
            self.accepted.errback(NoAnswer(f"{self._peer()} closed the stream without answering "
                                           f"the request for {self.uri}"))
            self.accepted.addErrback(lambda _: None)
        on_lost = getattr(self, "on_lost", None)
        if on_lost is not None:
            on_lost()


class Relay(protocol.Protocol):
    """Control-socket side of ``dmsgpty/proxy``: bytes both ways."""

    def __init__(self, remote):
        self.remote = remote

    def connectionMade(self):
        self.remote.attach(self.transport.write, self.transport.loseConnection)
        # Back-pressure both ways, as the dmsg server's splice does: a side
        # that does not read stops the other side's reads, never a buffer
        # growing without bound.
        _produce_into(self.transport, self.remote.transport)
        _produce_into(self.remote.transport, self.transport)

    def dataReceived(self, data):
        self.remote.transport.write(data)

    def connectionLost(self, reason=protocol.connectionDone):
        self.remote.transport.loseConnection()


def _produce_into(consumer, producer):
    register = getattr(consumer, "registerProducer", None)
    if register is not None and hasattr(producer, "pauseProducing"):
        try:
            register(producer, True)
        except RuntimeError:
            pass  # already fed by another producer


# -- endpoints: dmsg as just another place to listen and dial ------------------------

from twisted.internet import interfaces  # noqa: E402
from zope.interface import implementer  # noqa: E402


@implementer(interfaces.IListeningPort)
class DmsgPort:
    def __init__(self, client, port, factory):
        self.client, self.port, self.factory = client, port, factory

    def startListening(self):
        self.client.listen(self.port, self.factory)

    def stopListening(self):
        if self.client.listeners.get(self.port) is self.factory:
            del self.client.listeners[self.port]
        return defer.succeed(None)

    def getHost(self):
        return DmsgAddress(self.client.pk, self.port)


class DmsgAddress:
    def __init__(self, pk, port):
        self.pk, self.port = pk, port

    def __repr__(self):
        return f"DmsgAddress({self.pk.hex()}:{self.port})"


@implementer(interfaces.IStreamServerEndpoint)
class DmsgServerEndpoint:
    """Listen on a dmsg port of this host's dmsg client."""

    def __init__(self, client, port):
        self.client, self.port = client, port

    def listen(self, factory):
        if self.port in self.client.listeners:
            return defer.fail(DialError(f"dmsg port {self.port} is already in use"))
        listening = DmsgPort(self.client, self.port, factory)
        listening.startListening()
        return defer.succeed(listening)


@implementer(interfaces.IStreamClientEndpoint)
class DmsgClientEndpoint:
    """Dial pk:port over dmsg; the protocol's transport has getPeerPK()."""

    def __init__(self, client, pk, port):
        self.client, self.pk, self.port = client, pk, port

    def connect(self, factory):
        proto = factory.buildProtocol(DmsgAddress(self.pk, self.port))
        return self.client.dial(self.pk, self.port, proto)

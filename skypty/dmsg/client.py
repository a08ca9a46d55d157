"""The host's dmsg client: sessions to dmsg servers, its discovery entry,
listening on dmsg ports, and dialing other hosts by public key.

When discovery is down at start (or lists no servers yet) the host still
serves its control socket and TCP port; the client retries with
exponential backoff (1 s .. 60 s), logging once per change of state rather
than once per retry, and joins once it can.

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
MAX_EXISTING_TRIES = 8   # existing sessions tried for one dial
PEER_ENTRY_TTL = 30.0    # how long a dialled peer's discovery entry is reused
MAX_PEER_ENTRIES = 4096
MAX_NEW_SESSIONS = 2     # new sessions to the peer's servers for one dial
DIAL_TIMEOUT = ATTEMPT_TIMEOUT  # the old name
EPHEMERAL_PORTS = (49152, 65535)


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
        self._connecting = set()
        self._peer_entries = {}  # pk -> (entry, fetched at): see _peer_entry
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

    @defer.inlineCallbacks
    def _connect(self, server_pk, address):
        """Open a session to a server; -> None, or why it failed."""
        self._connecting.add(server_pk)
        try:
            host, port = _host_port(address)
            session = DmsgSession(True, self.sk, server_pk, self._incoming, self.reactor, on_lost=self._lost)
            ep = endpoints.TCP4ClientEndpoint(self.reactor, host, port, timeout=10)
            yield endpoints.connectProtocol(ep, session)
            yield session.ready  # fires once the handshake's last message has left alone (session.SETTLE_MIN)
            if session.transport is None or session.transport.disconnected:
                return "the server closed the session right after the handshake"
            self.sessions[server_pk] = session
            self.log.info("dmsg session to server {pk} at {addr}", pk=server_pk.hex(), addr=address)
            if not self.keeper._running:
                self.keeper.start()
            else:
                self.keeper.update_now()
            return None
        except Exception as e:
            self.log.debug("dmsg server {addr} unreachable: {err}", addr=address, err=e)
            return str(e) or type(e).__name__
        finally:
            self._connecting.discard(server_pk)

    def _lost(self, session):
        for pk, s in list(self.sessions.items()):
            if s is session:
                del self.sessions[pk]
                if not self.running:
                    self.log.info("dmsg session to {pk} closed", pk=pk.hex())
                    continue
                self.log.warn("dmsg session to {pk} lost; reconnecting", pk=pk.hex())
                self.keeper.update_now()
                self._kick()

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
            # The peer may have moved to other servers since we looked: look again.
            self._peer_entries.pop(pk, None)
            entry, _cached = yield self._peer_entry(pk)
            result = yield self._dial_entry(entry, pk, port, inner)
        return result

    @defer.inlineCallbacks
    def _peer_entry(self, pk):
        """-> (the peer's discovery entry, whether it came from the cache).
        Entries are kept PEER_ENTRY_TTL seconds: a burst of execs to one peer
        costs one discovery round trip, not one each."""
        now = self.reactor.seconds()
        hit = self._peer_entries.get(pk)
        if hit is not None and now - hit[1] < PEER_ENTRY_TTL:
            return hit[0], True
        try:
            entry = yield self.discovery.get_entry(pk)
        except EntryNotFound:
            self._peer_entries.pop(pk, None)
            raise NotInDiscovery(f"{pk.hex()[:16]}… is not in dmsg discovery (offline?)") from None
        except DiscoveryError as e:
            raise DiscoveryUnavailable(f"dmsg discovery unavailable: {e}") from None
        if len(self._peer_entries) >= MAX_PEER_ENTRIES:
            self._peer_entries.clear()
        self._peer_entries[pk] = (entry, now)
        return entry, False

    @defer.inlineCallbacks
    def _dial_entry(self, entry, pk, port, inner):
        delegated = list(entry.client.delegated_servers) if entry.client else []
        shared = [self.sessions[s] for s in delegated if s in self.sessions]
        others = [s for k, s in self.sessions.items() if k not in delegated]
        random.shuffle(others)
        tried, failures = 0, _Failures()
        for session in (shared + others)[:MAX_EXISTING_TRIES]:
            tried += 1
            result = yield self._attempt(session, pk, port, inner, failures)
            if result is not None:
                return result
        # Last resort: a session of our own to one of the peer's servers.
        for server_pk in [s for s in delegated if s not in self.sessions][:MAX_NEW_SESSIONS]:
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
        try:
            yield session.open_stream(stream)
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
        if server_pk in self.sessions:
            return self.sessions[server_pk]
        if server_pk in self._connecting:
            failures.append(f"server {server_pk.hex()[:16]}…: still connecting")
            return None
        try:
            entry = yield self.discovery.get_entry(server_pk)
        except DiscoveryError as e:
            failures.append(f"server {server_pk.hex()[:16]}…: {e}")
            return None
        if entry.server is None or not entry.server.address:
            failures.append(f"server {server_pk.hex()[:16]}…: no server entry")
            return None
        err = yield self._connect(server_pk, entry.server.address)
        if err is not None:
            failures.append(f"server {entry.server.address}: {err}")
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

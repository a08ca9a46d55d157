"""The host's dmsg client: sessions to dmsg servers, its discovery entry,
listening on dmsg ports, and dialing other hosts by public key.

When discovery is down at start the host still serves its control socket and
TCP port; the client keeps retrying with backoff and joins once it can.
"""

import itertools
import random

from twisted.application import service
from twisted.internet import defer, endpoints, protocol, task
from twisted.logger import Logger

from skypty.dmsg.disc import DiscoveryClient, DiscoveryError, EntryKeeper, EntryNotFound, client_entry
from skypty.dmsg.errors import (
    DialError, DiscoveryUnavailable, NoAnswer, NoSharedServer, NotInDiscovery, NotWhitelisted, StreamRefused,
)
from skypty.dmsg.session import DmsgSession
from skypty.dmsg.stream import AcceptStream, DialStream
from skypty.wire import requestline

RETRY_MIN, RETRY_MAX = 1.0, 30.0
DIAL_TIMEOUT = 20.0


def _host_port(address):
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class DmsgClientService(service.Service):
    log = Logger()

    def __init__(self, reactor, config):
        self.reactor = reactor
        self.sk = config.sk
        self.pk = config.pk
        self.wanted = config.dmsg.sessions_count
        self.preferred = list(config.dmsg.servers)
        self.discovery = DiscoveryClient(config.dmsg.discovery, reactor)
        self.sessions = {}  # server pk -> DmsgSession
        self.listeners = {}  # port -> factory
        self._ports = itertools.count(49153)
        self._connecting = set()
        self._retry = RETRY_MIN
        self._loop = None
        self.keeper = EntryKeeper(self.discovery, self.sk,
                                  lambda seq, ts: client_entry(self.pk, seq, ts, list(self.sessions)), reactor)

    # -- lifecycle --
    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self._maintain)
        self._loop.clock = self.reactor
        self._loop.start(RETRY_MIN, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.keeper.stop()
        for session in list(self.sessions.values()):
            session.transport.loseConnection()

    @defer.inlineCallbacks
    def _maintain(self):
        if len(self.sessions) >= self.wanted or self._connecting:
            return
        try:
            servers = yield self.discovery.available_servers()
        except DiscoveryError as e:
            self.log.warn("dmsg discovery unavailable: {err}", err=e)
            return
        candidates = [e for e in servers if e.static not in self.sessions]
        candidates.sort(key=lambda e: (e.static not in self.preferred, random.random()))
        for entry in candidates[: self.wanted - len(self.sessions)]:
            yield self._connect(entry.static, entry.server.address)

    @defer.inlineCallbacks
    def _connect(self, server_pk, address):
        self._connecting.add(server_pk)
        try:
            host, port = _host_port(address)
            session = DmsgSession(True, self.sk, server_pk, self._incoming, self.reactor, on_lost=self._lost)
            ep = endpoints.TCP4ClientEndpoint(self.reactor, host, port, timeout=10)
            yield endpoints.connectProtocol(ep, session)
            yield session.ready
            self.sessions[server_pk] = session
            self.log.info("dmsg session to server {pk} at {addr}", pk=server_pk.hex(), addr=address)
            if not self.keeper._running:
                self.keeper.start()
            else:
                self.keeper.update_now()
        except Exception as e:
            self.log.warn("dmsg server {addr} unreachable: {err}", addr=address, err=e)
        finally:
            self._connecting.discard(server_pk)

    def _lost(self, session):
        for pk, s in list(self.sessions.items()):
            if s is session:
                del self.sessions[pk]
                self.log.warn("dmsg session to {pk} lost; reconnecting", pk=pk.hex())
                self.keeper.update_now()

    # -- listening --
    def listen(self, port, factory):
        self.listeners[port] = factory

    def _incoming(self, session, stream):
        return AcceptStream(session, self.sk, self.listeners)

    # -- dialing --
    @defer.inlineCallbacks
    def dial(self, pk, port, inner):
        """-> Deferred[inner], connected over a KK stream to pk:port."""
        try:
            entry = yield self.discovery.get_entry(pk)
        except EntryNotFound:
            raise NotInDiscovery(f"{pk.hex()} is not in dmsg discovery (offline?)") from None
        except DiscoveryError as e:
            raise DiscoveryUnavailable(f"dmsg discovery unavailable: {e}") from None
        servers = list(entry.client.delegated_servers) if entry.client else []
        session = next((self.sessions[s] for s in servers if s in self.sessions), None)
        if session is None:
            raise NoSharedServer(f"{pk.hex()} shares no dmsg server with this host")
        stream = DialStream(session, self.sk, next(self._ports), pk, port, inner)
        try:
            yield session.open_stream(stream)
            result = yield stream.done.addTimeout(DIAL_TIMEOUT, self.reactor)
        except defer.TimeoutError:
            raise NoAnswer(f"{pk.hex()} did not answer over dmsg within {DIAL_TIMEOUT:.0f}s") from None
        except DialError:
            raise
        except Exception as e:
            # DialStream says "refused the stream" when the peer answered no;
            # anything else (the stream closed unanswered) is a peer that is gone.
            if "refused the stream" in str(e):
                raise StreamRefused(f"{pk.hex()} refused the stream on dmsg port {port} "
                                    "(nothing listens there)") from None
            raise NoAnswer(f"{pk.hex()} is not reachable over dmsg (stopped?): {e}") from None
        return result

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

    # -- the pty service of a remote host --
    @defer.inlineCallbacks
    def proxy_service(self, pk_hex, port, uri=requestline.PTY):
        """For ``dmsgpty/proxy``: a protocol relaying the caller to one of
        pk's services (its pty service, or skypty's sftp)."""
        from skypty.keys import PublicKey

        pk = PublicKey.from_hex(pk_hex)
        remote = yield self._request(pk, port, uri)
        return Relay(remote)

    @defer.inlineCallbacks
    def remote_pty(self, pk, port):
        from skypty.host.proxy import RemotePtyAvatar

        remote = yield self._request(pk, port)
        return RemotePtyAvatar(remote)

    @defer.inlineCallbacks
    def _request(self, pk, port, uri=requestline.PTY):
        """Dial pk:port (through the dmsg client endpoint) and ask for a service."""
        remote = RequestedService(uri, own_pk=self.pk, peer_pk=pk)
        yield DmsgClientEndpoint(self, pk, port).connect(protocol.Factory.forProtocol(lambda: remote))
        yield remote.accepted
        return remote


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
        return NotWhitelisted(f"host {self._peer()} does not whitelist {own}")

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

    def dataReceived(self, data):
        self.remote.transport.write(data)

    def connectionLost(self, reason=protocol.connectionDone):
        self.remote.transport.loseConnection()


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

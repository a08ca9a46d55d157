"""One incoming connection on any entry point: login, request line, service.

The same protocol runs on the control socket, the Noise TCP port and dmsg
streams.  The transport has already proven who the peer is; this protocol
asks the portal, then reads the request line and hands the connection to
the service the URI names (net/rpc for ``dmsgpty/pty``, SFTP for
``dmsgpty/sftp``...).  A refused peer never gets a process.
"""

from twisted.internet import defer, protocol
from twisted.logger import Logger

from skypty.errors import ProtocolError
from skypty.host.auth import IPtyAvatar, Mind, NotWhitelisted, ProvenPublicKey
from skypty.wire import requestline

REQUEST_TIMEOUT = 10.0
# After refusing, how long we keep reading (and discarding) what the peer
# already sent before closing for good; see HostConnection.close_refused.
REFUSAL_LINGER = 5.0
# A client may pipeline its first RPC call behind the request line while we
# are still logging it in; keep only that much.
MAX_EARLY_BYTES = 64 * 1024


class BareClose(Exception):
    """A service that fails before answering: close without a reply byte."""


class HostConnection(protocol.Protocol):
    log = Logger()

    def __init__(self, factory):
        self.factory = factory
        self.avatar = None
        self.inner = None
        self._state = "login"
        self._early = []
        self._early_size = 0
        self._parser = requestline.RequestLineParser()
        self._timeout = None
        self._linger = None

    # -- connection ---------------------------------------------------------------
    def connectionMade(self):
        f = self.factory
        self.peer_pk = f.peer_pk(self.transport)
        self._timeout = f.reactor.callLater(REQUEST_TIMEOUT, self._timed_out)
        creds = ProvenPublicKey(self.peer_pk, f.entry_point)
        d = f.portal.login(creds, Mind(f.entry_point, disconnect=self._revoked), IPtyAvatar)
        d.addCallbacks(self._logged_in, self._refused)
        d.addErrback(self._internal_error)

    def _logged_in(self, result):
        _iface, avatar, logout = result
        if self._state == "closed":
            logout()
            return
        self.avatar, self._logout = avatar, logout
        self._state = "request"
        self.log.info("accepted {pk} on {entry}", pk=self.peer_pk.hex(), entry=self.factory.entry_point,
                      peer=str(self.transport.getPeer()))
        early, self._early = b"".join(self._early), []
        if early:
            self._request_data(early)

    def _refused(self, failure):
        failure.trap(NotWhitelisted)
        self.log.warn("refused {pk} on {entry}: not whitelisted", pk=self.peer_pk.hex(),
                      entry=self.factory.entry_point, peer=str(self.transport.getPeer()))
        self._cancel_timeout()
        self.close_refused(requestline.REJECT if self.factory.reject_with_byte else b"")

    def close_refused(self, reply=b""):
        """End a refused connection so that the peer reliably sees the refusal.

        Closing a TCP (or unix) socket while the peer's request line is still
        unread makes the kernel answer with a reset, which the peer may see
        on its send or its recv instead of our reply or EOF.  So: send the
        reply, half-close (FIN), and keep reading and discarding until the
        peer closes too, or REFUSAL_LINGER passes."""
        self._state = "closed"
        if reply:
            self.transport.write(reply)
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is None:  # a dmsg stream: its close is already a clean FIN
            self.transport.loseConnection()
            return
        half_close()
        self._linger = self.factory.reactor.callLater(REFUSAL_LINGER, self.transport.abortConnection)

    def _revoked(self):
        """The peer's key was taken off the whitelist while connected.  Its
        pending calls have just been answered with the reason (auth.REVOKED):
        close after those bytes, not with an abort that would discard them.
        Nothing it sends is served any more (state "closed"), and a peer that
        does not read is cut after REFUSAL_LINGER."""
        self.log.info("dropping {pk} on {entry}: taken off the whitelist", pk=self.peer_pk.hex(),
                      entry=self.factory.entry_point)
        self._state = "closed"
        self._cancel_timeout()
        # Armed first: a transport that closes at once cancels it in connectionLost.
        self._linger = self.factory.reactor.callLater(REFUSAL_LINGER, self.transport.abortConnection)
        self.transport.loseConnection()

    def _internal_error(self, failure):
        self.log.failure("login failed on {entry}", failure, entry=self.factory.entry_point)
        self.transport.abortConnection()

    def dataReceived(self, data):
        if self._state == "service":
            self.inner.dataReceived(data)
        elif self._state == "request":
            self._request_data(data)
        elif self._state == "login":
            self._early_size += len(data)
            if self._early_size > MAX_EARLY_BYTES:
                self._state = "closed"
                self.transport.abortConnection()
            else:
                self._early.append(data)

    def _request_data(self, data):
        try:
            uri, leftover = self._parser.feed(data)
            if uri is not None:
                path, query = requestline.parse_uri(uri)
        except ProtocolError as e:
            # Ends this connection (this stream, over dmsg) only, with a reject.
            self.log.warn("bad request line from {pk} on {entry}: {err}", pk=self.peer_pk.hex(),
                          entry=self.factory.entry_point, err=e)
            self._cancel_timeout()
            self.close_refused(requestline.REJECT)
            return
        if uri is None:
            return
        self._cancel_timeout()
        route = self.factory.routes.get(path)
        if route is None:
            self.log.warn("rejected {uri!r} from {pk} on {entry}", uri=uri, pk=self.peer_pk.hex(),
                          entry=self.factory.entry_point)
            self.close_refused(requestline.REJECT)
            return
        self._state = "starting"
        try:
            inner = route(self.avatar, query, self)
        except BareClose:
            self._state = "closed"
            self.transport.loseConnection()
            return
        except Exception:
            # A bug, or an install replaced under a running host (a module gone):
            # log it, and tell a control-socket client it failed rather than hang up.
            self.log.failure("{uri!r} failed for {pk} on {entry}", uri=uri, pk=self.peer_pk.hex(),
                             entry=self.factory.entry_point)
            inner = defer.fail()
        if hasattr(inner, "addCallback"):  # a service that must prepare (e.g. dial a peer) first
            inner.addCallbacks(lambda p: self._start_service(p, leftover), self._service_failed)
        else:
            self._start_service(inner, leftover)

    def _start_service(self, inner, leftover):
        if self._state == "closed":
            inner.makeConnection(self.transport)
            inner.connectionLost(protocol.connectionDone)
            return
        self.transport.write(requestline.ACCEPT)
        self.inner = inner
        self._state = "service"
        inner.makeConnection(self.transport)
        if leftover:
            inner.dataReceived(leftover)

    def _service_failed(self, failure):
        self.log.warn("service failed for {pk}: {err}", pk=self.peer_pk.hex(), err=failure.getErrorMessage())
        if self.factory.entry_point != "cli":
            self._state = "closed"
            self.transport.loseConnection()  # the reference's bare close, for foreign clients
            return
        # On our own control socket the client deserves the real reason: the
        # reject byte, one length byte, then UTF-8 "reason-word: text" (reference
        # clients read the first byte and ignore the rest).
        self.close_refused(requestline.encode_rejection(getattr(failure.value, "reason", "failed"),
                                                        failure.getErrorMessage()))

    def _timed_out(self):
        self._timeout = None
        if self._state in ("login", "request"):
            self.log.warn("request line timeout from {pk}", pk=self.peer_pk.hex())
            self._state = "closed"
            self.transport.abortConnection()

    def _cancel_timeout(self):
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def connectionLost(self, reason=protocol.connectionDone):
        self._cancel_timeout()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._state = "closed"
        if self.inner is not None:
            self.inner.connectionLost(reason)
        if self.avatar is not None:
            self._logout()


class HostConnectionFactory(protocol.Factory):
    """Connections of one entry point ('cli', 'tcp', 'dmsg')."""

    protocol = HostConnection

    def __init__(self, portal, entry_point, routes, peer_pk, reactor, reject_with_byte):
        self.portal = portal
        self.entry_point = entry_point
        self.routes = routes  # path -> callable(avatar, query, connection) -> Protocol | Deferred
        self.peer_pk = peer_pk  # callable(transport) -> PublicKey
        self.reactor = reactor
        self.reject_with_byte = reject_with_byte

    def buildProtocol(self, addr):
        return HostConnection(self)

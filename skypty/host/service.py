"""HostService: the whole pty host as one twistd MultiService.

Children, each started and stopped by twistd: the embedded dmsg network (if
the config asks for one), the dmsg client and its port-22 listener, the
control socket, the Noise TCP port (``ssh_listen``), the web terminal
(``web_listen``) and the manhole.  Every entry point logs in through the same
portal, so one whitelist decides everywhere.
"""

from twisted.application import internet, service
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from skypty.host import gateway
from skypty.host.auth import IPtyAvatar, ProvenPublicKey, make_portal
from skypty.host.avatar import HostContext, PtyAvatar
from skypty.host.connection import HostConnectionFactory
from skypty.host.listeners import ControlSocketService
from skypty.host.persist import SessionRegistry
from skypty.host.whitelist import Whitelist


DMSG_HTTP_PORT = 80


class HostService(service.MultiService):
    log = Logger()

    def __init__(self, config, manhole=None, reactor=None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = config
        self.whitelist = Whitelist.from_config(config)
        self.sessions = (SessionRegistry(reactor, ttl=config.pty.session_ttl)
                         if config.pty.persistent_sessions else None)
        self.context = HostContext(reactor, self.whitelist, self.sessions)
        self.portal = make_portal(self.whitelist, self._make_avatar)
        self.web_token_path = config.path + ".web-token"
        self.web_url = None
        self.dmsg = None

        if config.dmsg.embedded is not None:
            from skypty.dmsg.embedded import EmbeddedDmsgService

            EmbeddedDmsgService(reactor, config).setServiceParent(self)
        self._add_dmsg()
        self._add_control_socket()
        if config.pty.ssh_listen is not None:
            self._add_tcp(config.pty.ssh_listen)
        if config.pty.web_listen is not None:
            self._add_web(config.pty.web_listen)
        manhole = manhole or config.pty.manhole
        if manhole:
            from skypty.host.manhole import make_manhole_service

            make_manhole_service(reactor, manhole, self).setServiceParent(self)

    # -- avatars -------------------------------------------------------------------
    def _make_avatar(self, pk, entry_point):
        return PtyAvatar(self.context, pk, entry_point)

    def login(self, pk, entry_point):
        """-> Deferred[(interface, avatar, logout)] through the one portal."""
        return self.portal.login(ProvenPublicKey(pk, entry_point), entry_point, IPtyAvatar)

    # -- entry points ------------------------------------------------------------------
    def connection_factory(self, entry_point, peer_pk, reject_with_byte):
        return HostConnectionFactory(self.portal, entry_point, gateway.routes_for(self, entry_point),
                                     peer_pk, self.reactor, reject_with_byte)

    def _add_control_socket(self):
        own = self.config.pk
        factory = self.connection_factory("cli", lambda transport: own, reject_with_byte=True)
        ControlSocketService(self.reactor, self.config.pty.cli_network, self.config.pty.cli_address,
                             factory).setServiceParent(self)

    def _add_tcp(self, listen):
        from skypty.noiseproto import NoiseFactory

        inner = self.connection_factory("tcp", lambda transport: transport.getPeerPK(),
                                        reject_with_byte=False)
        factory = NoiseFactory(inner, "XK", initiator=False, local_static=self.config.sk,
                               reactor=self.reactor)
        endpoint = endpoints.serverFromString(self.reactor, listen.endpoint)
        svc = internet.StreamServerEndpointService(endpoint, factory)
        svc._raiseSynchronously = True
        svc.setServiceParent(self)
        self.tcp_service = svc

    def _add_dmsg(self):
        from skypty.dmsg.client import DmsgClientService

        self.dmsg = DmsgClientService(self.reactor, self.config)
        self.dmsg.setServiceParent(self)
        factory = self.connection_factory("dmsg", lambda transport: transport.getPeerPK(),
                                          reject_with_byte=True)
        from skypty.dmsg.client import DmsgServerEndpoint

        svc = internet.StreamServerEndpointService(
            DmsgServerEndpoint(self.dmsg, self.config.pty.dmsg_port), factory)
        svc._raiseSynchronously = True
        svc.setServiceParent(self)

    def _add_web(self, listen):
        from skypty.web.site import TokenGate, load_or_create_token, make_web_site

        token = load_or_create_token(self.web_token_path)
        self.web_token = token
        site = make_web_site(self.reactor, self.config.pk, TokenGate(token), self.open_terminal)
        endpoint = endpoints.serverFromString(self.reactor, listen.endpoint)
        svc = internet.StreamServerEndpointService(endpoint, site)
        svc._raiseSynchronously = True
        svc.setServiceParent(self)
        host = listen.host or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        self.web_url = f"http://{host}:{listen.port}/pty?token={token}"
        if self.dmsg is not None:
            # The same terminal over dmsg, HTTP on port 80, for whitelisted keys.
            from skypty.dmsg.client import DmsgServerEndpoint
            from skypty.web.site import WhitelistGate

            dmsg_site = make_web_site(self.reactor, self.config.pk, WhitelistGate(self.whitelist),
                                      self.open_terminal)
            svc = internet.StreamServerEndpointService(DmsgServerEndpoint(self.dmsg, DMSG_HTTP_PORT), dmsg_site)
            svc.setServiceParent(self)

    @defer.inlineCallbacks
    def open_terminal(self, identity, target_pk, transport):
        """A terminal backend for the web: this host, or a remote one over dmsg."""
        from skypty.web.terminal import AvatarTerminal

        # "local" = the token holder, i.e. this host's own user; over dmsg the peer's own key.
        me = self.config.pk if identity == "local" else identity
        if target_pk is None or target_pk == self.config.pk:
            _iface, avatar, _logout = yield self.login(me, "web")
            return AvatarTerminal(avatar)
        if identity != "local":
            # A dmsg peer must not reach third hosts with this host's key.
            raise PermissionError("relaying to another host is only offered to this host's own user")
        remote = yield gateway.dial_remote_pty(self, target_pk, self.config.pty.dmsg_port)
        return AvatarTerminal(remote)

    def visible_peers(self):
        """Peers this host can see over dmsg (for ``skypty-client list``)."""
        if self.dmsg is None:
            return []
        return self.dmsg.visible_peers()

    # -- lifecycle -------------------------------------------------------------------------
    def startService(self):
        super().startService()
        if self.sessions is not None:
            self.sessions.start_sweeping()
        self.log.info("skypty host {pk} started", pk=self.config.pk.hex())
        if self.web_url:
            self.log.info("web terminal: {url}", url=self.web_url.split("?")[0])

    def stopService(self):
        d = defer.maybeDeferred(super().stopService)
        if self.sessions is not None:
            sessions = self.sessions.stop_all()
            d.addBoth(lambda r: sessions.addBoth(lambda _: r))
        return d

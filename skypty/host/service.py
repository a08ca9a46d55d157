"""HostService: the whole pty host as one twistd MultiService.

Children, each started and stopped by twistd: the embedded dmsg network (if
the config asks for one), the dmsg client and its port-22 listener, the
control socket, the Noise TCP port (``ssh_listen``), the web terminal
(``web_listen``) and the manhole.  Every entry point logs in through the same
portal, so one whitelist decides everywhere.

Start-up failures are one line naming the setting: ``check_listeners`` runs
before twistd daemonises (see skypty.tap), and a listener that still fails
when it starts is reported the same way.
"""

import sys

from twisted.application import internet, service
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from skypty.errors import SkyptyError
from skypty.host import gateway
from skypty.host.auth import IPtyAvatar, Mind, ProvenPublicKey, make_portal
from skypty.host.avatar import HostContext, PtyAvatar
from skypty.host.connection import HostConnectionFactory
from skypty.host.listeners import (
    ControlSocketService, ListenError, check_tcp_free, describe_failure,
)
from skypty.host.persist import SessionRegistry
from skypty.host.whitelist import Whitelist


DMSG_HTTP_PORT = 80


class StartupError(SkyptyError):
    """A listener that could not start; the message is the operator's one line."""


class HostService(service.MultiService):
    log = Logger()

    def __init__(self, config, manhole=None, reactor=None, foreground=False, created=False):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = config
        # twistd -n: a failed start exits with its one line instead of a traceback.
        self.foreground = foreground
        # The config was written just now (a typo in --config looks exactly like this).
        self.created = created
        # child service -> (setting, value), to name the setting when it fails to start
        self._settings = {}
        self.whitelist = Whitelist.from_config(config)
        self.sessions = (SessionRegistry(reactor, ttl=config.pty.session_ttl)
                         if config.pty.persistent_sessions else None)
        self.context = HostContext(reactor, self.whitelist, self.sessions)
        self.portal = make_portal(self.whitelist, self._make_avatar)
        if self.sessions is not None:
            # Revocation also ends detached sessions: nothing is left to reattach to.
            self.whitelist.observe(lambda wl: self.sessions.forget_owned_by(
                lambda owner: owner not in wl, "owner taken off the whitelist"))
        self.web_token_path = config.path + ".web-token"
        self.web_url = None
        self.dmsg = None
        self.dialer = None  # how proxies and the web reach peers (skypty.visor.dialer); set by _add_dmsg

        if config.dmsg.embedded is not None:
            from skypty.dmsg.embedded import EmbeddedDmsgService

            emb = config.dmsg.embedded
            svc = EmbeddedDmsgService(reactor, config)
            svc.setServiceParent(self)
            self._settings[svc] = ("dmsg.embedded",
                                   f"(discovery_listen {emb.discovery_listen}, server_listen {emb.server_listen})")
        self._add_dmsg()
        self._add_control_socket()
        if config.pty.ssh_listen is not None:
            self._add_tcp(config.pty.ssh_listen)
        if config.pty.web_listen is not None:
            self._add_web(config.pty.web_listen)
        setting = "--manhole" if manhole else config.pty_key + ".manhole"
        manhole = manhole or config.pty.manhole
        self.manhole = None
        if manhole:
            from skypty.host.manhole import make_manhole_service

            self.manhole = make_manhole_service(reactor, manhole, self, setting)
            self.manhole.setServiceParent(self)
            self._settings[self.manhole] = (setting, manhole)

    # -- avatars -------------------------------------------------------------------
    def _make_avatar(self, pk, entry_point):
        return PtyAvatar(self.context, pk, entry_point)

    def login(self, pk, entry_point, disconnect=None):
        """-> Deferred[(interface, avatar, logout)] through the one portal;
        *disconnect()* ends the login's connection if the key is revoked."""
        return self.portal.login(ProvenPublicKey(pk, entry_point), Mind(entry_point, disconnect), IPtyAvatar)

    # -- entry points ------------------------------------------------------------------
    def connection_factory(self, entry_point, peer_pk, reject_with_byte):
        factory = HostConnectionFactory(self.portal, entry_point, gateway.routes_for(self, entry_point),
                                        peer_pk, self.reactor, reject_with_byte)
        factory.noisy = False  # "Starting factory" lines say nothing an operator needs
        return factory

    def _add_control_socket(self):
        own = self.config.pk
        factory = self.connection_factory("cli", lambda transport: own, reject_with_byte=True)
        setting = self.config.pty_key + ".cli_address"
        self.control = ControlSocketService(self.reactor, self.config.pty.cli_network,
                                            self.config.pty.cli_address, factory, setting)
        self.control.setServiceParent(self)
        self._settings[self.control] = (setting, self.config.pty.cli_address)

    def _add_tcp(self, listen):
        from skypty.wire.noiseproto import NoiseFactory

        inner = self.connection_factory("tcp", lambda transport: transport.getPeerPK(),
                                        reject_with_byte=False)
        factory = NoiseFactory(inner, "XK", initiator=False, local_static=self.config.sk,
                               reactor=self.reactor)
        factory.noisy = False
        endpoint = endpoints.serverFromString(self.reactor, listen.endpoint)
        svc = internet.StreamServerEndpointService(endpoint, factory)
        svc._raiseSynchronously = True
        svc.setServiceParent(self)
        self.tcp_service = svc
        self._settings[svc] = (self.config.pty_key + ".ssh_listen", str(listen))

    def _add_dmsg(self):
        from skypty.dmsg.client import DmsgClientService

        self.dmsg = DmsgClientService(self.reactor, self.config)
        self.dmsg.setServiceParent(self)
        from skypty.visor.dialer import standalone_dialer

        self.dialer = standalone_dialer(self.reactor, self.dmsg)
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
        site.noisy = False
        endpoint = endpoints.serverFromString(self.reactor, listen.endpoint)
        svc = internet.StreamServerEndpointService(endpoint, site)
        svc._raiseSynchronously = True
        svc.setServiceParent(self)
        self._settings[svc] = (self.config.pty_key + ".web_listen", str(listen))
        host = listen.host or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        self.web_url = f"http://{host}:{listen.port}/pty?token={token}"
        if self.dmsg is not None:
            # The same terminal over dmsg, HTTP on port 80, for whitelisted keys.
            from skypty.dmsg.client import DmsgServerEndpoint
            from skypty.web.site import WhitelistGate

            dmsg_site = make_web_site(self.reactor, self.config.pk, WhitelistGate(self.whitelist),
                                      self.open_terminal)
            dmsg_site.noisy = False
            svc = internet.StreamServerEndpointService(DmsgServerEndpoint(self.dmsg, DMSG_HTTP_PORT), dmsg_site)
            svc.setServiceParent(self)

    @defer.inlineCallbacks
    def open_terminal(self, identity, target_pk, transport, scheme=None):
        """A terminal backend for the web: this host, or a remote one (skynet
        first under a visor, then dmsg; *scheme* pins one)."""
        from skypty.web.terminal import AvatarTerminal

        # "local" = the token holder, i.e. this host's own user; over dmsg the peer's own key.
        me = self.config.pk if identity == "local" else identity
        if target_pk is None or target_pk == self.config.pk:
            _iface, avatar, _logout = yield self.login(me, "web", disconnect=transport.loseConnection)
            return AvatarTerminal(avatar)
        if identity != "local":
            # A dmsg peer must not reach third hosts with this host's key.
            raise PermissionError("relaying to another host is only offered to this host's own user")
        remote = yield gateway.dial_remote_pty(self, target_pk, self.config.pty.dmsg_port, scheme)
        return AvatarTerminal(remote)

    def visible_peers(self):
        """Peers this host can see over dmsg (for ``skypty-client list``)."""
        if self.dmsg is None:
            return []
        return self.dmsg.visible_peers()

    # -- start-up checks -------------------------------------------------------------------
    def check_listeners(self):
        """Raise ListenError (one line) if a listener could not start now.

        Run before twistd daemonises, so a busy port or a live control socket
        is reported by the process the operator started, with its exit code.
        """
        pty = self.config.pty_key
        tcp = [(pty + ".ssh_listen", self.config.pty.ssh_listen),
               (pty + ".web_listen", self.config.pty.web_listen)]
        emb = self.config.dmsg.embedded
        if emb is not None:
            tcp += [("dmsg.embedded.discovery_listen", emb.discovery_listen),
                    ("dmsg.embedded.server_listen", emb.server_listen)]
        seen = {}
        for setting, listen in tcp:
            if listen is None:
                continue
            if listen.port and listen.port in seen:
                raise ListenError(f"{setting} {listen}: port {listen.port} is also {seen[listen.port]} "
                                  f"(choose another port)")
            seen[listen.port] = setting
            check_tcp_free(setting, listen.host, listen.port)
        self.control.check()
        if self.manhole is not None:
            self.manhole.check()

    # -- lifecycle -------------------------------------------------------------------------
    def _start_child(self, child, start):
        try:
            start()
        except (CannotListenError, ListenError, OSError) as e:
            setting, value = self._settings.get(child, ("a listener", ""))
            message = describe_failure(setting, value, e)
            self.log.critical("cannot start: {message}", message=message)
            if self.foreground:
                # twistd has pointed sys.stderr at the log by now; the operator's terminal is
                # the original one.
                sys.__stderr__.write(f"skypty: {message}\n")
                raise SystemExit(1) from None
            raise StartupError(message) from None

    def privilegedStartService(self):
        service.Service.privilegedStartService(self)
        for child in self:
            self._start_child(child, child.privilegedStartService)

    def startService(self):
        service.Service.startService(self)
        for child in self:
            self._start_child(child, child.startService)
        if self.sessions is not None:
            self.sessions.start_sweeping()
        self.announce()

    def announce(self):
        """The start lines of the log."""
        if self.created:
            self.log.warn("{path} did not exist: wrote a new config there with a NEW identity, "
                          "pk {pk}", path=self.config.path, pk=self.config.pk.hex())
        self.log.info("skypty host {pk} started: {entries}", pk=self.config.pk.hex(),
                      entries=self.describe_entry_points())

    def describe_entry_points(self):
        """One line: where this host can be reached."""
        pty, dmsg = self.config.pty, self.config.dmsg
        parts = [f"control {pty.cli_network}:{pty.cli_address}"]
        if pty.ssh_listen is not None:
            parts.append(f"noise tcp {pty.ssh_listen}")
        if self.web_url:
            parts.append(f"web {self.web_url.split('?')[0]}")
        embedded = " (embedded)" if dmsg.embedded is not None else ""
        parts.append(f"dmsg port {pty.dmsg_port} via discovery {dmsg.discovery}{embedded}")
        return ", ".join(parts)

    def stopService(self):
        self.log.info("skypty host {pk} stopping", pk=self.config.pk.hex())
        d = defer.maybeDeferred(super().stopService)
        if self.sessions is not None:
            sessions = self.sessions.stop_all()
            d.addBoth(lambda r: sessions.addBoth(lambda _: r))
        return d

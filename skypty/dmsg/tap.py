"""``twistd skypty-dmsg``: a self-hosted dmsg network (discovery + server)."""

import hashlib

from twisted.application import internet, service
from twisted.internet import endpoints
from twisted.python import usage

from skypty.config import ConfigError, ListenAddress
from skypty.keys import InvalidKey, PublicKey, SecretKey


class Options(usage.Options):
    synopsis = "[--discovery 127.0.0.1:9090] [--server 127.0.0.1:8081] [--sk HEX | --seed TEXT]"
    longdesc = ("Run a dmsg discovery service and a dmsg server, so skypty hosts can reach each other "
                "by public key with no Skywire infrastructure. Point hosts at it with "
                "dmsg.discovery = http://HOST:PORT of --discovery.")
    optParameters = [
        ["discovery", None, "127.0.0.1:9090", "Where the discovery HTTP API listens ('' = none)."],
        ["server", None, "127.0.0.1:8081", "Where the dmsg server listens."],
        ["address", None, None, "The server address advertised in discovery (default: --server)."],
        ["discovery-url", None, None, "Discovery to register the server with (default: the one above)."],
        ["sk", None, None, "The server's secret key (hex); default: derived from --seed."],
        ["seed", None, "skypty-dmsg", "Derive the server key from this text (stable across restarts)."],
        ["idle-timeout", None, "300", "Close a spliced stream idle this many seconds (0 = never)."],
    ]
    optFlags = [
        ["no-mesh", None, "Do not peer with the other servers discovery lists (--peer still applies)."],
    ]
    optParameters += [
        ["log-level", None, "info", "skypty's own log lines at this level and above (debug, info, warn, "
                                    "error); other libraries' only from warn."],
    ]

    def __init__(self):
        super().__init__()
        self.peers = []

    def opt_peer(self, value):
        """PK@HOST:PORT of a peer dmsg server to forward streams through (repeatable)."""
        pk, sep, address = value.partition("@")
        try:
            if not sep or ":" not in address:
                raise ValueError("expected PK@HOST:PORT")
            _, _, port = address.rpartition(":")
            int(port)
            self.peers.append((PublicKey.from_hex(pk), address))
        except (ValueError, InvalidKey) as e:
            raise usage.UsageError(f"--peer {value}: {e}")

    def postOptions(self):
        try:
            self.server = ListenAddress.parse(self["server"], "--server")
            self.disc = ListenAddress.parse(self["discovery"], "--discovery") if self["discovery"] else None
        except ConfigError as e:
            raise usage.UsageError(str(e))
        try:
            self.sk = (SecretKey.from_hex(self["sk"]) if self["sk"]
                       else SecretKey(hashlib.sha256(self["seed"].encode()).digest()))
        except InvalidKey as e:
            raise usage.UsageError(f"--sk: {e}")
        if self.disc is None and not self["discovery-url"]:
            raise usage.UsageError("without --discovery, give --discovery-url")
        from skypty.logs import parse_level

        try:
            self.log_level = parse_level(self["log-level"])
        except ValueError as e:
            raise usage.UsageError(f"--log-level: {e}")
        try:
            self.idle_timeout = float(self["idle-timeout"])
            if self.idle_timeout < 0:
                raise ValueError
        except ValueError:
            raise usage.UsageError("--idle-timeout must be a number of seconds") from None


def makeService(options):
    from twisted.internet import reactor

    from skypty.dmsg.discserver import make_discovery_site
    from skypty.dmsg.server import DmsgServerService

    top = service.MultiService()
    if options.disc is not None:
        ep = endpoints.serverFromString(reactor, options.disc.endpoint)
        internet.StreamServerEndpointService(ep, make_discovery_site(reactor)).setServiceParent(top)
    host = options.disc.host or "127.0.0.1" if options.disc else None
    url = options["discovery-url"] or f"http://{host}:{options.disc.port}"
    address = options["address"] or str(ListenAddress(options.server.host or "127.0.0.1", options.server.port))
    DmsgServerService(reactor, options.sk, options.server, address, url, peers=options.peers,
                      discover_peers=not options["no-mesh"],
                      idle_timeout=options.idle_timeout or None).setServiceParent(top)
    from skypty.logs import FilteredLogging, make_log_file_private

    twistd = getattr(options, "parent", None)  # twistd's own options, when run by twistd
    make_log_file_private(twistd)
    return top if twistd is None else FilteredLogging(top, twistd, options.log_level)

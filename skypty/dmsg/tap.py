"""``twistd skypty-dmsg``: a self-hosted dmsg network (discovery + server).

The server's key lives in ``--key-file`` (default ``skypty-dmsg-key.json``
in the directory twistd starts in, as the host's ``skywire-config.json``):
a random key is written there, mode 0600, on the first start and read on
every later one, so the server keeps its identity and nobody else knows
it.  ``--seed`` derives the key from a text instead: anyone who knows the
text knows the secret key, so it is for tests only.
"""

import hashlib
import json
import os
import stat
import sys

from twisted.application import internet, service
from twisted.internet import endpoints
from twisted.python import usage

from skypty.config import ConfigError, ListenAddress
from skypty.keys import InvalidKey, PublicKey, SecretKey

DEFAULT_KEY_FILE = "skypty-dmsg-key.json"


class Options(usage.Options):
    synopsis = "[--discovery 127.0.0.1:9090] [--server 127.0.0.1:8081] [--key-file FILE | --sk HEX]"
    longdesc = ("Run a dmsg discovery service and a dmsg server, so skypty hosts can reach each other "
                "by public key with no Skywire infrastructure. Point hosts at it with "
                "dmsg.discovery = http://HOST:PORT of --discovery.")
    optParameters = [
        ["discovery", None, "127.0.0.1:9090", "Where the discovery HTTP API listens ('' = none)."],
        ["server", None, "127.0.0.1:8081", "Where the dmsg server listens."],
        ["address", None, None, "The server address advertised in discovery (default: --server)."],
        ["discovery-url", None, None, "Discovery to register the server with (default: the one above)."],
        ["key-file", None, DEFAULT_KEY_FILE,
         "The server's key (JSON, mode 0600); a random one is written there on the first start."],
        ["sk", None, None, "The server's secret key (hex), instead of --key-file."],
        ["seed", None, None, "TESTS ONLY: derive the key from this text (anyone who knows the text "
                             "knows the key)."],
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
        if self["sk"] and self["seed"]:
            raise usage.UsageError("give --sk or --seed, not both")
        try:
            if self["sk"]:
                self.sk = SecretKey.from_hex(self["sk"])
            elif self["seed"]:
                self.sk = SecretKey(hashlib.sha256(self["seed"].encode()).digest())
            else:
                self.sk, created = load_or_create_key(self["key-file"])
                if created:
                    sys.stderr.write(f"skypty-dmsg: wrote a new server key to {self['key-file']} "
                                     f"(pk {self.sk.public_key.hex()})\n")
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


def load_or_create_key(path):
    """-> (SecretKey, created).  A missing file gets a new random key (0600,
    written atomically); an existing one must hold a matching sk/pk pair,
    and is made private if others could read it."""
    from skypty.config import write_json_atomically

    if not os.path.lexists(path):
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise usage.UsageError(f"--key-file {path}: directory {directory} does not exist")
        sk = SecretKey.generate()
        try:
            write_json_atomically(path, {"sk": sk.hex(), "pk": sk.public_key.hex()})
        except OSError as e:
            raise usage.UsageError(f"--key-file {path}: cannot write a new key: {e.strerror}") from None
        return sk, True
    try:
        mode = os.stat(path).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            os.chmod(path, 0o600)
            sys.stderr.write(f"skypty-dmsg: {path} was readable by others; made it private (0600)\n")
        with open(path, "rb") as f:
            data = json.loads(f.read(64 * 1024))
        sk = SecretKey.from_hex(data["sk"])
        if "pk" in data and PublicKey.from_hex(data["pk"]) != sk.public_key:
            raise ValueError("its pk does not match its sk")
    except OSError as e:
        raise usage.UsageError(f"--key-file {path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError, InvalidKey) as e:
        raise usage.UsageError(f"--key-file {path}: not a skypty-dmsg key file ({e})") from None
    return sk, False


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

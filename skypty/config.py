"""skywire-config.json -> frozen attrs classes.

skypty reads a real Skywire visor config.  Only the keys below matter; every
other key in the file (visors carry many) is ignored.  Any bad value stops
start-up with one ConfigError line that names the key.

    sk, pk                 the host identity (pk must match sk)
    hypervisors            PKs that are always whitelisted
    dmsg.discovery         URL of the dmsg discovery service
    dmsg.sessions_count    how many dmsg servers to keep sessions with
    dmsg.servers           dmsg server PKs to prefer (optional)
    dmsg.embedded          {"discovery_listen", "server_listen", "server_address"}:
                           run a local discovery and dmsg server in the host
    pty | dmsgpty          the pty section (``dmsgpty`` is the legacy name)
        dmsg_port          22
        cli_network        "unix" (or "tcp")
        cli_address        "/tmp/pty.sock"
        whitelist          extra PKs allowed in
        ssh_listen         "" = off; ":2022" = Noise XK over TCP on port 2022 (every
                           interface); a generated config has "127.0.0.1:2022"
        persistent_sessions  false
        session_ttl        "5m": how long a detached session lives
        web_listen         "" = off; "127.0.0.1:8080" = the web terminal
        manhole            "" = off; a Twisted endpoint such as unix:/run/skypty-manhole.sock
        log_level          "info" (or debug, warn, error, critical); twistd skypty --log-level wins
        sftp               {"root": "/", "read_only": false}
"""

import json
import os
import re

import attr

from skypty.errors import SkyptyError
from skypty.durations import parse_duration
from skypty.keys import InvalidKey, PublicKey, SecretKey

DEFAULT_DISCOVERY = "http://127.0.0.1:9090"
# The reference's path, kept (#25.10): a per-user default under
# $XDG_RUNTIME_DIR would differ between a host started by systemd or cron
# (unset) and a client in a login session (set), and logind deletes that
# directory, socket included, when the user's last session ends, under a
# host that outlives it.  Squatting in /tmp is closed where it matters: the
# client refuses a socket held by another user (SO_PEERCRED), and the host
# names the holder; docs/guide.md recommends a private directory.
DEFAULT_CLI_ADDRESS = "/tmp/pty.sock"
DEFAULT_DMSG_PORT = 22
DEFAULT_SESSION_TTL = 300.0
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")

# The public Skywire deployments' dmsg discovery services (the reference's
# services-config.json): "prod" is the live network, "test" the developers' one.
NETWORKS = {
    "prod": "http://dmsgd.skywire.skycoin.com",
    "test": "http://dmsgd.skywire.dev",
}


class ConfigError(SkyptyError):
    """A config file that cannot be used; the message names the key."""


def parse_listen(value, key):
    """Go-style 'host:port' / ':port' -> (host, port); host '' means every interface."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected \"host:port\" or \":port\", got {_shown(value)}")
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected \"host:port\" or \":port\" (port 0-65535), got {_shown(value)}")
    host = host.strip("[]")
    return host, int(port)


def listen_endpoint(host, port):
    """(host, port) -> a twisted server endpoint description."""
    if not host:
        return f"tcp:{port}"
    return "tcp:{}:interface={}".format(port, host.replace(":", "\\:"))


@attr.s(frozen=True, slots=True)
class ListenAddress:
    host = attr.ib(type=str)
    port = attr.ib(type=int)

    @classmethod
    def parse(cls, value, key):
        return cls(*parse_listen(value, key))

    @property
    def endpoint(self):
        return listen_endpoint(self.host, self.port)

    def __str__(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@attr.s(frozen=True, slots=True)
class EmbeddedDmsg:
    """A local dmsg discovery + server run inside the host process."""

    discovery_listen = attr.ib(type=ListenAddress)
    server_listen = attr.ib(type=ListenAddress)
    # What the server advertises in discovery; defaults to its listen address.
    server_address = attr.ib(type=str)


@attr.s(frozen=True, slots=True)
class DmsgConfig:
    discovery = attr.ib(type=str, default=DEFAULT_DISCOVERY)
    sessions_count = attr.ib(type=int, default=1)
    servers = attr.ib(type=tuple, default=())
    embedded = attr.ib(default=None)


@attr.s(frozen=True, slots=True)
class SftpConfig:
    enabled = attr.ib(type=bool, default=True)
    root = attr.ib(type=str, default="/")
    read_only = attr.ib(type=bool, default=False)


@attr.s(frozen=True, slots=True)
class PtyConfig:
    dmsg_port = attr.ib(type=int, default=DEFAULT_DMSG_PORT)
    cli_network = attr.ib(type=str, default="unix")
    cli_address = attr.ib(type=str, default=DEFAULT_CLI_ADDRESS)
    whitelist = attr.ib(type=tuple, default=())
    ssh_listen = attr.ib(default=None)
    persistent_sessions = attr.ib(type=bool, default=False)
    session_ttl = attr.ib(type=float, default=DEFAULT_SESSION_TTL)
    web_listen = attr.ib(default=None)
    manhole = attr.ib(type=str, default="")
    sftp = attr.ib(type=SftpConfig, factory=SftpConfig)
    log_level = attr.ib(type=str, default="info")

    @property
    def cli_endpoint(self):
        """The control socket as a twisted endpoint description."""
        if self.cli_network == "unix":
            return "unix:" + self.cli_address.replace(":", "\\:")
        return ListenAddress.parse(self.cli_address, "pty.cli_address").endpoint


@attr.s(frozen=True, slots=True)
class Config:
    path = attr.ib(type=str)
    sk = attr.ib(type=SecretKey, repr=False)
    pk = attr.ib(type=PublicKey)
    hypervisors = attr.ib(type=tuple, default=())
    dmsg = attr.ib(type=DmsgConfig, factory=DmsgConfig)
    pty = attr.ib(type=PtyConfig, factory=PtyConfig)
    # The name the pty section had in the file ("pty" or legacy "dmsgpty").
    pty_key = attr.ib(type=str, default="pty")

    @property
    def static_whitelist(self):
        """Own PK + hypervisors + pty.whitelist (runtime additions live elsewhere)."""
        keys = [self.pk, *self.hypervisors, *self.pty.whitelist]
        return tuple(dict.fromkeys(keys))


# -- parsing helpers: each names the key it checks ---------------------------

# What to write instead, in JSON terms (the file is JSON, not Python).
_EXPECTED = {int: "a whole number", bool: "true or false (no quotes)",
             str: "a string in double quotes", list: "a list [...]", dict: "an object {...}"}


def _typed(section, name, kind, default, prefix):
    value = section.get(name, default)
    if value is None:
        return default
    wrong = (isinstance(value, bool) or not isinstance(value, int)) if kind is int \
        else not isinstance(value, kind)
    if wrong:
        raise ConfigError(f"{prefix}{name}: expected {_EXPECTED[kind]}, got {_shown(value)}")
    return value


def _shown(value, limit=60):
    """A value as JSON, cut short: it goes into a one-line error."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _pk_list(values, key):
    if values is None:
        return ()
    if not isinstance(values, list):
        raise ConfigError(f"{key}: expected a list of public keys [\"02ab...\"], got {_shown(values)}")
    keys = []
    for i, value in enumerate(values):
        if isinstance(value, dict):  # some configs list servers as objects
            value = value.get("static") or value.get("pk")
        try:
            keys.append(PublicKey.from_hex(value if isinstance(value, str) else ""))
        except InvalidKey as e:
            raise ConfigError(f"{key}[{i}]: {e}") from None
    return tuple(keys)


def _section(data, name, prefix=""):
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{prefix}{name}: expected an object {{...}}, got {_shown(value)}")
    return value


def _optional_listen(section, name, prefix):
    value = _typed(section, name, str, "", prefix)
    return ListenAddress.parse(value, prefix + name) if value else None


def _parse_dmsg(data):
    section = _section(data, "dmsg")
    p = "dmsg."
    count = _typed(section, "sessions_count", int, 1, p)
    if count < 1:
        raise ConfigError("dmsg.sessions_count: must be at least 1")
    embedded = None
    emb = _section(section, "embedded", p)
    if emb:
        disc = ListenAddress.parse(_typed(emb, "discovery_listen", str, "127.0.0.1:9090", "dmsg.embedded."),
                                   "dmsg.embedded.discovery_listen")
        srv = ListenAddress.parse(_typed(emb, "server_listen", str, "127.0.0.1:8081", "dmsg.embedded."),
                                  "dmsg.embedded.server_listen")
        advertised = _typed(emb, "server_address", str, "", "dmsg.embedded.") or str(
            ListenAddress(srv.host or "127.0.0.1", srv.port))
        embedded = EmbeddedDmsg(disc, srv, advertised)
    discovery = _typed(section, "discovery", str, DEFAULT_DISCOVERY, p).rstrip("/")
    if not re.match(r"^https?://[^/\s]+", discovery):
        raise ConfigError(f"dmsg.discovery: expected an http(s) URL, got {discovery!r}")
    return DmsgConfig(
        discovery=discovery,
        sessions_count=count,
        servers=_pk_list(section.get("servers"), "dmsg.servers"),
        embedded=embedded,
    )


def _parse_pty(data):
    key = "pty" if "pty" in data else "dmsgpty"
    section = _section(data, key)
    p = key + "."
    port = _typed(section, "dmsg_port", int, DEFAULT_DMSG_PORT, p)
    if not 0 < port < 65536:
        raise ConfigError(f"{p}dmsg_port: must be between 1 and 65535, got {port}")
    network = _typed(section, "cli_network", str, "unix", p) or "unix"
    if network not in ("unix", "tcp"):
        raise ConfigError(f"{p}cli_network: must be 'unix' or 'tcp', got {network!r}")
    address = _typed(section, "cli_address", str, DEFAULT_CLI_ADDRESS, p) or DEFAULT_CLI_ADDRESS
    if network == "tcp":
        ListenAddress.parse(address, p + "cli_address")
    sftp = _section(section, "sftp", p)
    sftp_config = SftpConfig(
        enabled=_typed(sftp, "enabled", bool, True, p + "sftp."),
        root=_typed(sftp, "root", str, "/", p + "sftp.") or "/",
        read_only=_typed(sftp, "read_only", bool, False, p + "sftp."),
    )
    manhole = _typed(section, "manhole", str, "", p)
    log_level = _typed(section, "log_level", str, "info", p) or "info"
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"{p}log_level: expected one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    return key, PtyConfig(
        dmsg_port=port,
        cli_network=network,
        cli_address=address,
        whitelist=_pk_list(section.get("whitelist"), p + "whitelist"),
        ssh_listen=_optional_listen(section, "ssh_listen", p),
        persistent_sessions=_typed(section, "persistent_sessions", bool, False, p),
        session_ttl=parse_duration(section.get("session_ttl", DEFAULT_SESSION_TTL), p + "session_ttl", ConfigError),
        web_listen=_optional_listen(section, "web_listen", p),
        manhole=manhole,
        sftp=sftp_config,
        log_level=log_level,
    )


def parse_config(data, path="<config>"):
    """Build a Config from an already-decoded JSON object."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    sk_hex = data.get("sk")
    if not isinstance(sk_hex, str):
        raise ConfigError("sk: missing (the host's secret key, 64 hex characters)")
    try:
        sk = SecretKey.from_hex(sk_hex)
    except InvalidKey as e:
        raise ConfigError(f"sk: {e}") from None
    pk = sk.public_key
    if data.get("pk") is not None:
        try:
            stated = PublicKey.from_hex(data["pk"] if isinstance(data["pk"], str) else "")
        except InvalidKey as e:
            raise ConfigError(f"pk: {e}") from None
        if stated != pk:
            raise ConfigError(f"pk: does not match sk (sk gives {pk.hex()})")
    pty_key, pty = _parse_pty(data)
    return Config(
        path=path,
        sk=sk,
        pk=pk,
        hypervisors=_pk_list(data.get("hypervisors"), "hypervisors"),
        dmsg=_parse_dmsg(data),
        pty=pty,
        pty_key=pty_key,
    )


def load_config(path):
    """Read and check *path*; a ConfigError names the file and the key."""
    try:
        with open(path, "rb") as f:
            raw = f.read(16 * 1024 * 1024)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    try:
        return parse_config(data, path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_or_create_config(path):
    """-> (Config, created).  A missing file is created with a new identity,
    as the README's first command expects; a missing directory is refused,
    because it almost always means a typo in the path."""
    if os.path.lexists(path):
        return load_config(path), False
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(f"{path}: directory {directory} does not exist (fix the --config path, "
                          f"or create the directory to start a new host there)")
    try:
        return generate_config_file(path), True
    except OSError as e:
        raise ConfigError(f"{path}: cannot write a new config: {e.strerror}") from None


# A generated config's Noise TCP port: on loopback, as its web terminal, so a
# fresh host is usable at once (shell PK@127.0.0.1:2022) but opens nothing to
# the network until asked (config gen --ssh-listen :2022, or edit the file).
GENERATED_SSH_LISTEN = "127.0.0.1:2022"


def generate_config_data(sk=None, *, cli_address=DEFAULT_CLI_ADDRESS, ssh_listen=GENERATED_SSH_LISTEN,
                         web_listen="127.0.0.1:8080", discovery_port=9090, server_port=8081,
                         discovery=None, embedded_discovery=None, embedded_server=None,
                         server_address="", dmsg_port=DEFAULT_DMSG_PORT, whitelist=(),
                         persistent_sessions=False, manhole=""):
    """A fresh config with new keys.

    By default the host runs its own dmsg network (discovery on
    127.0.0.1:*discovery_port*, server on 127.0.0.1:*server_port*); with
    *discovery* (a URL: another host's embedded discovery, or one of
    NETWORKS) it joins that network instead and runs none of its own.
    """
    sk = sk or SecretKey.generate()
    if discovery:
        dmsg = {"discovery": discovery.rstrip("/"), "sessions_count": 1, "servers": []}
    else:
        disc = ListenAddress.parse(embedded_discovery or f"127.0.0.1:{discovery_port}",
                                   "dmsg.embedded.discovery_listen")
        embedded = {"discovery_listen": str(disc),
                    "server_listen": embedded_server or f"127.0.0.1:{server_port}"}
        if server_address:
            embedded["server_address"] = server_address
        # The host reaches its own discovery on loopback when it listens on every interface.
        own = disc.host if disc.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        own = f"[{own}]" if ":" in own else own
        dmsg = {"discovery": f"http://{own}:{disc.port}", "sessions_count": 1, "servers": [],
                "embedded": embedded}
    return {
        "version": "v1.3.0",
        "sk": sk.hex(),
        "pk": sk.public_key.hex(),
        "dmsg": dmsg,
        "hypervisors": [],
        "pty": {
            "dmsg_port": dmsg_port,
            "cli_network": "unix",
            "cli_address": cli_address,
            "whitelist": list(whitelist),
            "ssh_listen": ssh_listen,
            "persistent_sessions": persistent_sessions,
            "session_ttl": "5m",
            "web_listen": web_listen,
            **({"manhole": manhole} if manhole else {}),
        },
    }


def write_json_atomically(path, data, mode=0o600):
    """Write JSON so a crash never leaves a half-written file behind."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def generate_config_file(path, **kwargs):
    """Write a fresh config to *path* (mode 0600: it holds the secret key)."""
    data = generate_config_data(**kwargs)
    config = parse_config(data, path)  # a bad option fails before anything is written
    write_json_atomically(path, data)
    return config


def save_whitelist(path, pty_key, keys):
    """Persist a runtime whitelist change into the config file's pty section.

    Every other key in the file is kept as it is.
    """
    with open(path, "rb") as f:
        data = json.loads(f.read())
    section = data.setdefault(pty_key, {})
    section["whitelist"] = [k.hex() for k in keys]
    mode = os.stat(path).st_mode & 0o777
    write_json_atomically(path, data, mode)

"""Names for hosts: ``$XDG_CONFIG_HOME/skypty/hosts.toml`` (default
``~/.config/skypty/hosts.toml``), and turning what a user typed (a name, a
``@group``, a PK, ``PK@HOST[:PORT]``) into a ``Target``.

The file is read with ``tomllib``.  Nothing in the standard library writes
TOML, so ``hosts add``/``hosts remove`` write it themselves in one fixed
layout (``render_hosts``).  They refuse to rewrite a file whose content
that layout would lose (comments, a file they cannot parse): it is the
user's file, and a silent rewrite must never eat their notes.

Kept light: the client imports this on every name lookup, so no Twisted
and nothing heavy at import time.
"""

import os
import re
import sys
from dataclasses import dataclass, field

from skypty.errors import SkyptyError

DEFAULT_TCP_PORT = 2022
TRANSPORTS = ("tcp", "dmsg", "skynet")
FIELDS = ("key", "addr", "transport", "groups", "predict")
PREDICT_MODES = ("auto", "always", "never")
MAX_FILE_BYTES = 1024 * 1024

# Names never contain ':' '@' '/' (they would clash with NAME:PATH, @group,
# PK@HOST) and are at most 64 characters, so a name is never a 66-hex key.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_PK_RE = re.compile(r"[0-9a-fA-F]{66}")
_HOST_RE = re.compile(r"[A-Za-z0-9._%:-]+")

HEADER = """\
# skypty host names (skypty-client hosts; docs/guide.md, "Host names").
# One table per host: key (66 hex), optional addr ("host:port", the Noise TCP
# port), transport ("tcp", "dmsg" or "skynet") and groups (["edge", ...]).
# `skypty-client hosts add/remove` rewrite this file in this layout and
# refuse to when it holds anything they would lose, such as other comments.
"""


class HostsError(SkyptyError):
    pass


def hosts_path(environ=None):
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "skypty", "hosts.toml")


@dataclass(frozen=True)
class HostEntry:
    name: str
    key: str  # 66 hex, lower case
    addr: str = None  # "host:port" of the Noise TCP port
    transport: str = None  # None: tcp when addr is set, else the local host's choice
    groups: tuple = ()
    predict: str = None  # local echo prediction for shells on this host (None: the default)

    @property
    def direct(self):
        """True when this host is reached over its Noise TCP port."""
        return self.transport == "tcp" or (self.transport is None and self.addr is not None)


# -- parsing and rendering (pure) -------------------------------------------------------------

def check_name(name, what="name"):
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise HostsError(f"bad {what} {name!r}: use letters, digits, '_', '-' and '.' "
                         "(at most 64, starting with a letter or digit)")
    return name


def check_key(text, what="key"):
    """66 hex characters on the curve -> the lower-case hex."""
    from skypty.keys import InvalidKey, PublicKey

    if not isinstance(text, str):
        raise HostsError(f"{what}: expected a string of 66 hex characters")
    try:
        return PublicKey.from_hex(text).hex()
    except InvalidKey as e:
        raise HostsError(f"{what} {text!r}: {e}") from None


def split_address(text, default_port=DEFAULT_TCP_PORT):
    """'host[:port]' or '[v6][:port]' -> (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise HostsError(f"bad address {text!r}")
    else:
        host, _, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    if not _HOST_RE.fullmatch(host) or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise HostsError(f"bad address {text!r}: expected HOST[:PORT]")
    return host, int(port) if port else default_port


def check_addr(text, what="addr"):
    if not isinstance(text, str):
        raise HostsError(f"{what}: expected a string \"host:port\"")
    try:
        host, port = split_address(text)
    except HostsError as e:
        raise HostsError(f"{what}: {e}") from None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_entry(name, key, addr=None, transport=None, groups=(), predict=None):
    """A validated HostEntry (the one place every rule lives)."""
    check_name(name)
    where = f"host {name}: "
    key = check_key(key, where + "key")
    if addr is not None:
        addr = check_addr(addr, where + "addr")
    if transport is not None and transport not in TRANSPORTS:
        raise HostsError(f"{where}transport {transport!r}: expected one of {', '.join(TRANSPORTS)}")
    if transport == "tcp" and addr is None:
        raise HostsError(f"{where}transport \"tcp\" needs an addr (host:port)")
    if isinstance(groups, str) or not all(isinstance(g, str) for g in groups):
        raise HostsError(f"{where}groups: expected a list of names, e.g. [\"edge\"]")
    groups = tuple(dict.fromkeys(check_name(g, "group name") for g in groups))
    if predict is not None and predict not in PREDICT_MODES:
        raise HostsError(f"{where}predict {predict!r}: expected one of {', '.join(PREDICT_MODES)}")
    return HostEntry(name, key, addr, transport, groups, predict)


def parse_hosts(text, path="hosts.toml"):
    """The file's text -> {name: HostEntry}, in file order."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11: the backport (setup.cfg installs it there)
        import tomli as tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise HostsError(f"{path} is not valid TOML: {e}") from None
    hosts = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise HostsError(f"{path}: {name!r} is not a [table] (one [NAME] table per host)")
        unknown = sorted(set(table) - set(FIELDS))
        if unknown:
            raise HostsError(f"{path}: host {name}: unknown field {unknown[0]!r} "
                             f"(known: {', '.join(FIELDS)})")
        if "key" not in table:
            raise HostsError(f"{path}: host {name}: no key")
        try:
            hosts[name] = make_entry(name, table["key"], table.get("addr"), table.get("transport"),
                                     table.get("groups", ()), table.get("predict"))
        except HostsError as e:
            raise HostsError(f"{path}: {e}") from None
    return hosts


def _toml_string(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_hosts(hosts):
    """{name: HostEntry} -> the file's text, in the one layout we write."""
    out = [HEADER]
    for entry in hosts.values():
        name = entry.name if _BARE_KEY_RE.fullmatch(entry.name) else _toml_string(entry.name)
        out.append(f"\n[{name}]\nkey = {_toml_string(entry.key)}\n")
        if entry.addr is not None:
            out.append(f"addr = {_toml_string(entry.addr)}\n")
        if entry.transport is not None:
            out.append(f"transport = {_toml_string(entry.transport)}\n")
        if entry.groups:
            out.append(f"groups = [{', '.join(_toml_string(g) for g in entry.groups)}]\n")
        if entry.predict is not None:
            out.append(f"predict = {_toml_string(entry.predict)}\n")
    return "".join(out)


def check_rewritable(text, path):
    """Raise unless rewriting *text* in our layout keeps everything in it.

    Data survives by construction (every field is validated and rendered);
    what would be lost is comments, so any comment other than our header is
    a reason to refuse.  (No value we accept can contain '#'.)"""
    hosts = parse_hosts(text, path)
    header = set(HEADER.splitlines())
    for number, line in enumerate(text.splitlines(), 1):
        if "#" in line and line not in header:
            raise HostsError(f"refusing to rewrite {path}: line {number} has a comment that this "
                             "command would lose (it writes the file in its own layout); "
                             "edit the file by hand instead")
    if parse_hosts(render_hosts(hosts), path) != hosts:  # cannot happen; never risk the file
        raise HostsError(f"refusing to rewrite {path}: it would not read back the same")
    return hosts


# -- the file ---------------------------------------------------------------------------------

def read_text(path):
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise HostsError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise HostsError(f"{path} is larger than 1 MiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HostsError(f"{path} is not UTF-8 text") from None


_cache = {}


def load_hosts(path=None):
    """{name: HostEntry}; an absent file is an empty one."""
    path = path or hosts_path()
    if path not in _cache:
        text = read_text(path)
        _cache[path] = {} if text is None else parse_hosts(text, path)
    return _cache[path]


def write_atomically(path, text):
    """Readers see the old file or the new one, never half of either."""
    import tempfile

    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=".hosts.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _cache.pop(path, None)


def update_hosts(change, path=None):
    """Read, check we may rewrite, apply ``change(hosts) -> hosts``, write."""
    path = path or hosts_path()
    text = read_text(path)
    hosts = {} if text is None else check_rewritable(text, path)
    hosts = change(dict(hosts))
    write_atomically(path, render_hosts(hosts))
    return hosts


# -- targets ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """One host to act on.  *host*/*port* set: direct Noise TCP; else through
    the local host's control socket, with *scheme* pinned when not None."""

    pk: str
    name: str = None
    host: str = None
    port: int = None
    scheme: str = None
    text: str = field(default=None, compare=False)

    @property
    def direct(self):
        return self.host is not None

    @property
    def label(self):
        if self.name:
            return self.name
        short = self.pk[:12]
        return f"{short}@{self.address}" if self.direct else short

    @property
    def address(self):
        return f"[{self.host}]:{self.port}" if ":" in (self.host or "") else f"{self.host}:{self.port}"


def is_pk(text):
    return bool(_PK_RE.fullmatch(text))


def unknown_name(text, path=None):
    path = path or hosts_path()
    return HostsError(f"unknown host {text!r}: not a 66-hex key, PK@HOST[:PORT], nor a name in {path} "
                      f"(skypty-client hosts add {text} PK)")


def entry_target(entry):
    if entry.direct:
        host, port = split_address(entry.addr)
        return Target(entry.key, entry.name, host, port, text=entry.name)
    scheme = entry.transport if entry.transport in ("dmsg", "skynet") else None
    return Target(entry.key, entry.name, scheme=scheme, text=entry.name)


def resolve_target(text, default_port=DEFAULT_TCP_PORT, hosts=None):
    """'PK', 'PK@HOST[:PORT]' or 'NAME' -> Target."""
    if is_pk(text):
        return Target(check_key(text, "host key"), text=text)
    if "@" in text and not text.startswith("@"):
        pk_text, _, address = text.partition("@")
        if is_pk(pk_text):
            host, port = split_address(address, default_port)
            return Target(check_key(pk_text, "host key"), host=host, port=port, text=text)
        raise HostsError(f"expected PK@HOST[:PORT], got {text!r}")
    hosts = load_hosts() if hosts is None else hosts
    entry = hosts.get(text)
    if entry is None:
        raise unknown_name(text)
    return entry_target(entry)


def expand_targets(texts, default_port=DEFAULT_TCP_PORT, hosts=None):
    """Targets for many words, '@group' included; each host once (by label)."""
    out = {}
    for text in texts:
        if text.startswith("@"):
            hosts = load_hosts() if hosts is None else hosts
            group = text[1:]
            members = [e for e in hosts.values() if group in e.groups]
            if not members:
                raise HostsError(f"no host in group {group!r} ({hosts_path()}: groups = [...])")
            targets = [entry_target(e) for e in members]
        else:
            targets = [resolve_target(text, default_port, hosts)]
        for t in targets:
            out.setdefault(t.label, t)
    return list(out.values())


def resolve_pk(text, what="host key"):
    """A key or a name -> the key's hex (for verbs that take a bare PK)."""
    if is_pk(text) or "@" in text or ":" in text:
        return check_key(text, what)
    entry = load_hosts().get(text)
    if entry is None:
        raise unknown_name(text)
    return entry.key


def resolve_pks(texts, what="public key"):
    """Keys, names and @groups -> keys' hex, each once, in order."""
    keys = []
    for text in texts:
        if text.startswith("@"):
            keys += [t.pk for t in expand_targets([text])]
        else:
            keys.append(resolve_pk(text, what))
    return list(dict.fromkeys(keys))


def resolve_address(text, default_port=DEFAULT_TCP_PORT, verb="a direct connection"):
    """'PK@HOST[:PORT]' or a name with an addr -> (pk hex, host, port)."""
    if "@" in text or is_pk(text):
        target = resolve_target(text, default_port)
        if not target.direct:
            raise HostsError(f"expected PK@HOST[:PORT], got {text!r}")
    else:
        entry = load_hosts().get(text)
        if entry is None:
            raise unknown_name(text)
        if entry.addr is None:
            raise HostsError(f"host {text} has no addr in {hosts_path()}, and {verb} needs one "
                             f"(skypty-client hosts add {text} {entry.key} --addr HOST:PORT)")
        target = Target(entry.key, text, *split_address(entry.addr, default_port))
    return target.pk, target.host, target.port


def looks_like_target(word):
    """For the `exec web1 uname -a` hint: is *word* a host rather than a command word?"""
    if is_pk(word) or word.startswith("@"):
        return True
    if "@" in word:
        return is_pk(word.partition("@")[0])
    try:
        return word in load_hosts()
    except HostsError:
        return False


# -- skypty-client hosts ---------------------------------------------------------------------

def _print_table(hosts, out):
    if not hosts:
        out.write(f"no host names yet ({hosts_path()}); add one: "
                  "skypty-client hosts add NAME PK [--addr HOST:PORT] [--group G]\n")
        return
    rows = [("NAME", "KEY", "ADDR", "TRANSPORT", "GROUPS")]
    for e in hosts.values():
        transport = e.transport or ("tcp" if e.addr else "local host")
        rows.append((e.name, e.key, e.addr or "-", transport, ",".join(e.groups) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4] + "\n")


def cmd_hosts(args, parser):
    from skypty.client.errors import fail

    out = sys.stdout
    try:
        if args.hosts_verb in (None, "list"):
            hosts = load_hosts()
            if getattr(args, "names", False):
                for name in hosts:
                    out.write(name + "\n")
                for group in dict.fromkeys(g for e in hosts.values() for g in e.groups):
                    out.write("@" + group + "\n")
                return 0
            _print_table(hosts, out)
            return 0
        if args.hosts_verb == "add":
            key, addr = args.key, args.addr
            if "@" in key:  # `hosts add web1 PK@HOST:PORT`
                key, _, address = key.partition("@")
                if addr is not None:
                    raise HostsError("give the address once: PK@HOST:PORT or --addr, not both")
                addr = address
            entry = make_entry(args.name, key, addr, args.transport, args.group or (),
                               getattr(args, "predict", None))

            def add(hosts):
                if entry.name in hosts and not args.force:
                    raise HostsError(f"{entry.name} is already named (key {hosts[entry.name].key}); "
                                     "--force replaces it")
                hosts[entry.name] = entry
                return hosts
            update_hosts(add)
            out.write(f"{entry.name} = {entry.key}" + (f" at {entry.addr}" if entry.addr else "") + "\n")
            return 0
        if args.hosts_verb == "remove":
            def remove(hosts):
                missing = [n for n in args.names if n not in hosts]
                if missing:
                    raise HostsError(f"no host named {missing[0]!r} in {hosts_path()}")
                for n in args.names:
                    del hosts[n]
                return hosts
            update_hosts(remove)
            for n in args.names:
                out.write(f"removed {n}\n")
            return 0
    except HostsError as e:
        return fail(str(e))
    except OSError as e:
        return fail(f"{hosts_path()}: {e.strerror or e}")
    parser.parse_args(["hosts", "--help"])
    return 1

"""Which key the client speaks as, resolved the way Skywire's CLI does it.

Order: ``--sk HEX``; ``--no-visor-key`` (a fresh random key, said on stderr);
``-p/--pkg`` (/opt/skywire/skywire.json); ``-i/--input CONFIG``;
``$SKYPTY_CONFIG``; ``./skywire-config.json``.
"""

import os
import sys

from skypty.errors import SkyptyError

PACKAGE_CONFIG = "/opt/skywire/skywire.json"
DEFAULT_CONFIG = "skywire-config.json"


class IdentityError(SkyptyError):
    pass


def config_path(args):
    if getattr(args, "pkg", False):
        return PACKAGE_CONFIG
    return getattr(args, "input", None) or os.environ.get("SKYPTY_CONFIG") or DEFAULT_CONFIG


KEY_HINT = "use -i CONFIG, --sk HEX or --no-visor-key"
SOCKET_HINT = "it names the local host's control socket; or give --cliaddr"


def read_config_json(path, hint=KEY_HINT):
    import json  # not at import: `exec PK --cliaddr ...` reads no config

    try:
        with open(path, "rb") as f:
            return json.loads(f.read(16 * 1024 * 1024))
    except OSError as e:
        raise IdentityError(f"cannot read config {path}: {e.strerror} ({hint})") from None
    except ValueError as e:
        raise IdentityError(f"config {path} is not valid JSON: {e}") from None


def resolve_secret_key(args):
    """-> skypty.keys.SecretKey for this invocation."""
    from skypty.keys import InvalidKey, SecretKey

    if getattr(args, "sk", None):
        try:
            return SecretKey.from_hex(args.sk)
        except InvalidKey as e:
            raise IdentityError(f"--sk: {e}") from None
    if getattr(args, "no_visor_key", False):
        sk = SecretKey.generate()
        sys.stderr.write(f"skypty-client: using a fresh random key, pk {sk.public_key.hex()}\n")
        return sk
    path = config_path(args)
    data = read_config_json(path)
    try:
        return SecretKey.from_hex(data.get("sk", "") if isinstance(data, dict) else "")
    except InvalidKey as e:
        raise IdentityError(f"{path}: sk: {e}") from None


def _config_named(args):
    """True when the user named the config (-p, -i or $SKYPTY_CONFIG)."""
    return bool(getattr(args, "pkg", False) or getattr(args, "input", None) or os.environ.get("SKYPTY_CONFIG"))


def control_socket(args):
    """(network, address) of the local host's control socket: --cliaddr, else
    the one the config names.  A config the user named must be readable;
    only the implicit ./skywire-config.json may be missing (then /tmp/pty.sock)."""
    if getattr(args, "cliaddr", None):
        return getattr(args, "clinet", None) or "unix", args.cliaddr
    path = config_path(args)
    if _config_named(args) or os.path.exists(path):
        data = read_config_json(path, SOCKET_HINT)
    else:
        data = {}
    section = (data.get("pty") or data.get("dmsgpty") or {}) if isinstance(data, dict) else {}
    return (getattr(args, "clinet", None) or section.get("cli_network") or "unix",
            section.get("cli_address") or "/tmp/pty.sock")

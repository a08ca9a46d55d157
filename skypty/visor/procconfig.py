"""The visor's launch contract, parsed and checked (pure: no I/O).

A visor starts an external app with ``PROC_CONFIG`` in its environment: JSON
naming the app server (``app_server_addr``), the key that authenticates this
process to it (``proc_key``, 16 bytes as 32 hex) and the visor's public key
(``visor_pk``), which under a visor is the host's identity.  The app's first
bytes on the app server connection are the hello: a big-endian u16 length and
the JSON ``{"proc_key":"<hex>"}``; nothing comes back, and the connection then
carries Go net/rpc.  See docs/protocol.md, "Under a visor".
"""

import json
import re

import attr

from skypty.errors import SkyptyError
from skypty.keys import InvalidKey, PublicKey

ENV_NAME = "PROC_CONFIG"
# A visor's PROC_CONFIG is a few hundred bytes; anything huge is not from one.
MAX_PROC_CONFIG = 64 * 1024


class ProcConfigError(SkyptyError):
    """PROC_CONFIG is missing or unusable; the message names the field."""


@attr.s(frozen=True, slots=True)
class ProcConfig:
    app_name = attr.ib(type=str)
    app_server_host = attr.ib(type=str)
    app_server_port = attr.ib(type=int)
    proc_key = attr.ib(type=str, repr=False)  # 32 lowercase hex: also the app server's RPC service name
    visor_pk = attr.ib(type=PublicKey)
    routing_port = attr.ib(type=int, default=0)
    proc_args = attr.ib(type=tuple, default=())
    proc_work_dir = attr.ib(type=str, default="")

    @property
    def app_server_addr(self):
        host = f"[{self.app_server_host}]" if ":" in self.app_server_host else self.app_server_host
        return f"{host}:{self.app_server_port}"


def _field(data, name, kind, required=False, default=None):
    value = data.get(name)
    if value is None:
        if required:
            raise ProcConfigError(f"{ENV_NAME}.{name}: missing")
        return default
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ProcConfigError(f"{ENV_NAME}.{name}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _host_port(value):
    """Go's 'host:port' (also 'localhost:5505', '[::1]:5505')."""
    host, sep, port = value.rpartition(":")
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise ProcConfigError(f"{ENV_NAME}.app_server_addr: expected host:port, got {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"  # what the visor listens on; avoids a resolver round trip
    return host, int(port)


def parse_proc_config(text):
    """The JSON of PROC_CONFIG -> ProcConfig, or ProcConfigError (one line)."""
    if text is None:
        raise ProcConfigError(f"{ENV_NAME} is not set: skypty-visor-app is started by a Skywire visor "
                              "(a launcher.apps entry); to run a host on its own use "
                              "'twistd -n skypty --config FILE'")
    if len(text) > MAX_PROC_CONFIG:
        raise ProcConfigError(f"{ENV_NAME}: {len(text)} bytes is not a visor's proc config")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ProcConfigError(f"{ENV_NAME}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ProcConfigError(f"{ENV_NAME}: expected a JSON object")
    key = _field(data, "proc_key", str, required=True)
    if not re.fullmatch(r"[0-9a-fA-F]{32}", key) or not int(key, 16):
        raise ProcConfigError(f"{ENV_NAME}.proc_key: expected 32 hex characters, not all zero")
    try:
        visor_pk = PublicKey.from_hex(_field(data, "visor_pk", str, required=True))
    except InvalidKey as e:
        raise ProcConfigError(f"{ENV_NAME}.visor_pk: {e}") from None
    if visor_pk.is_null:
        raise ProcConfigError(f"{ENV_NAME}.visor_pk: the null key")
    host, port = _host_port(_field(data, "app_server_addr", str, required=True))
    routing_port = _field(data, "routing_port", int, default=0)
    if not 0 <= routing_port < 65536:
        raise ProcConfigError(f"{ENV_NAME}.routing_port: must be 0..65535, got {routing_port}")
    args = _field(data, "proc_args", list, default=[])
    if not all(isinstance(a, str) for a in args):
        raise ProcConfigError(f"{ENV_NAME}.proc_args: expected a list of strings")
    return ProcConfig(
        app_name=_field(data, "app_name", str, default=""),
        app_server_host=host,
        app_server_port=port,
        proc_key=key.lower(),
        visor_pk=visor_pk,
        routing_port=routing_port,
        proc_args=tuple(args),
        proc_work_dir=_field(data, "proc_work_dir", str, default=""),
    )


def encode_hello(proc_key):
    """The app's first bytes to the app server: u16 BE length + the JSON Go's
    encoding/json writes for Hello{ProcKey} (empty fields are omitempty)."""
    body = json.dumps({"proc_key": proc_key}, separators=(",", ":")).encode("ascii")
    return len(body).to_bytes(2, "big") + body


"""What every verb stands on: one line per failure, keys and host names
resolved to targets, and channels to them (direct Noise TCP, the local
host's control socket, or through the local host to a peer).

Below the verbs (commands, fleet, cp, fs) and above identity, transport,
rpc, errors and hosts; no verb imports another verb's module for these.
"""

import os
import sys

from skypty.client.errors import ClientError, explain_rpc, fail, not_whitelisted, proxy_refusal, usage_error
from skypty.client.identity import IdentityError, control_socket, resolve_secret_key
from skypty.client.rpc import RejectedError, request_service
from skypty.client.transport import TransportError, connect_control, connect_noise
from skypty.errors import SkyptyError
from skypty.wire import requestline
from skypty.wire.rpc import RPCError

DEFAULT_TCP_PORT = 2022
STDIN_LIMIT = 1024 * 1024
PROXY_ANSWER_TIMEOUT = 60.0


# -- one line per failure ----------------------------------------------------------------------------

def guarded(fn):
    """Turn every expected failure into one clear line and its exit code."""
    def run(args, parser):
        try:
            return fn(args, parser)
        except ClientError as e:
            return fail(str(e), e.code)
        except RPCError as e:
            return fail(explain_rpc(str(e), getattr(args, "attach", None)) or str(e))
        except (TransportError, IdentityError, SkyptyError, OSError) as e:
            if isinstance(e, TimeoutError) or e.__class__.__name__ == "timeout":
                return fail("timed out waiting for the host")
            return fail(str(e) or e.__class__.__name__)
    return run


# -- keys, names and targets -----------------------------------------------------------

def parse_pk(text, what="public key", names=True):
    """A 66-hex key, or (*names*) a host name from hosts.toml -> PublicKey."""
    from skypty.keys import InvalidKey, PublicKey

    if names and len(text) != 66:  # a host name (skypty.client.hosts); keys pay nothing for this
        from skypty.client.hosts import resolve_pk

        text = resolve_pk(text, what)
    try:
        return PublicKey.from_hex(text)
    except InvalidKey as e:
        raise SkyptyError(f"{what} {text!r}: {e}") from None


def parse_pks(texts):
    """Keys, host names and @groups -> PublicKeys, each once."""
    if any(len(t) != 66 for t in texts):
        from skypty.client.hosts import resolve_pks

        texts = resolve_pks(texts)
    return list(dict.fromkeys(parse_pk(k) for k in texts))


def parse_target(text, default_port):
    """'PK@HOST[:PORT]' (or a host name with an addr) -> (pk, host, port)."""
    pk_text, at, address = text.partition("@")
    if not at and len(text) != 66:
        from skypty.client.hosts import resolve_address

        pk_text, host, port = resolve_address(text, default_port)
        return parse_pk(pk_text, "host key"), host, port
    if not at or not address:
        raise SkyptyError(f"expected PK@HOST[:PORT], got {text!r}")
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = address.partition(":")
    if port and not port.isdigit():
        raise SkyptyError(f"bad port in {text!r}")
    # In PK@HOST the part before the @ is a key, never a name.
    return parse_pk(pk_text, "host key", names=False), host, int(port) if port else default_port


def no_key_flags(args, what):
    """The control socket speaks as the local host: a key of our own would be ignored."""
    for flag, given in (("--sk", getattr(args, "sk", None)), ("--no-visor-key", getattr(args, "no_visor_key", False))):
        if given:
            raise usage_error(f"{flag} has no effect on {what}: the local host's control socket "
                              "acts with that host's own key (pick the host with -i CONFIG or --cliaddr)")


# -- channels -------------------------------------------------------------------------------

def open_direct(pk, host, port, args, uri=requestline.PTY):
    sk = resolve_secret_key(args)
    channel = connect_noise(host, port, pk, sk)
    try:
        return channel, request_service(channel, uri)
    except RejectedError as e:
        channel.close()
        if e.closed:  # after a good handshake, a Noise TCP host hangs up on strangers
            raise ClientError(not_whitelisted(pk.hex(), sk.public_key.hex())) from None
        raise ClientError(f"host {pk.hex()} refused {uri} (that service is off there)") from None


def open_control(args, uri):
    network, address = control_socket(args)
    channel = connect_control(network, address)
    try:
        return channel, request_service(channel, uri)
    except RejectedError as e:
        channel.close()
        raise ClientError(f"the local host at {address} refused {uri}" + (f": {e.text}" if e.text else "")) from None


def open_remote_via_host(args, pk):
    network, address = control_socket(args)
    channel = connect_control(network, address)
    uri = requestline.proxy_uri(pk.hex(), args.port)
    if getattr(args, "scheme", None):  # the local host dials skynet then dmsg, unless pinned
        uri += f"&scheme={args.scheme}"
    # The local host bounds each transport's dial itself (skynet 5 s, dmsg
    # 30 s): wait for its answer longer than the connect timeout.
    channel.settimeout(PROXY_ANSWER_TIMEOUT)
    try:
        return channel, request_service(channel, uri)
    except RejectedError as e:
        channel.close()
        raise ClientError(proxy_refusal(e.reason, e.text, pk.hex(), args.port, closed=e.closed)) from None


# -- what an exec request carries ----------------------------------------------------------

def timeout_ms(args):
    from skypty.durations import DurationError, parse_duration  # not skypty.config: attrs is slow to import

    try:
        return int(parse_duration(args.timeout, "--timeout") * 1000)
    except DurationError as e:
        raise SkyptyError(str(e)) from None


def exec_env():
    return [f"{k}={os.environ[k]}" for k in ("TERM", "LANG", "LC_ALL") if os.environ.get(k)]


def read_stdin(args):
    if not getattr(args, "stdin", False):
        return b""
    data = sys.stdin.buffer.read(STDIN_LIMIT + 1)
    if len(data) > STDIN_LIMIT:
        raise SkyptyError("stdin is larger than 1 MiB")
    return data

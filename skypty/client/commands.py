"""skypty-client verbs (argument parsing lives in skypty.client.main)."""

import os
import sys

from skypty.client.identity import IdentityError, control_socket, resolve_secret_key
from skypty.client.rpc import BlockingRPC, request_service
from skypty.client.transport import TransportError, connect_control, connect_noise
from skypty.errors import SkyptyError
from skypty.wire import requestline
from skypty.wire import types as T
from skypty.wire.rpc import RPCError

DEFAULT_TCP_PORT = 2022
STDIN_LIMIT = 1024 * 1024
EXIT_TIMEOUT = 124


def fail(message, code=1):
    sys.stderr.write(f"skypty-client: {message}\n")
    return code


def parse_pk(text, what="public key"):
    from skypty.keys import InvalidKey, PublicKey

    try:
        return PublicKey.from_hex(text)
    except InvalidKey as e:
        raise SkyptyError(f"{what} {text!r}: {e}") from None


def parse_target(text, default_port):
    """'PK@HOST[:PORT]' -> (pk, host, port)."""
    pk_text, at, address = text.partition("@")
    if not at or not address:
        raise SkyptyError(f"expected PK@HOST[:PORT], got {text!r}")
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = address.partition(":")
    if port and not port.isdigit():
        raise SkyptyError(f"bad port in {text!r}")
    return parse_pk(pk_text, "host key"), host, int(port) if port else default_port


def timeout_ms(args):
    from skypty.config import ConfigError, parse_duration

    try:
        return int(parse_duration(args.timeout, "--timeout") * 1000)
    except ConfigError as e:
        raise SkyptyError(str(e)) from None


# -- channels -----------------------------------------------------------------------

def open_direct(pk, host, port, args, uri=requestline.PTY):
    sk = resolve_secret_key(args)
    channel = connect_noise(host, port, pk, sk)
    return channel, request_service(channel, uri)


def open_control(args, uri):
    network, address = control_socket(args)
    channel = connect_control(network, address)
    return channel, request_service(channel, uri)


def open_remote_via_host(args, pk):
    if getattr(args, "scheme", None) == "skynet":
        raise SkyptyError("--scheme skynet is not available yet; use --scheme dmsg or --via tcp://PK@HOST:PORT")
    return open_control(args, requestline.proxy_uri(pk.hex(), args.port))


def _exec_env():
    return [f"{k}={os.environ[k]}" for k in ("TERM", "LANG", "LC_ALL") if os.environ.get(k)]


def run_exec(channel, early, command, timeout, stdin=b""):
    """pty.Exec on an accepted channel; mirrors the exit code."""
    rpc = BlockingRPC(channel, early)
    channel.settimeout(timeout / 1000.0 + 30)
    req = T.CommandExecReq.cls(name=command[0], arg=list(command[1:]), env=_exec_env(), stdin=stdin,
                               timeout_ms=timeout)
    result = rpc.call("pty.Exec", req, T.CommandExecReq, T.CommandExecResult)
    out, err = sys.stdout.buffer, sys.stderr.buffer
    out.write(result.stdout)
    out.flush()
    err.write(result.stderr)
    if result.stdout_truncated:
        err.write(b"[skypty: stdout truncated at 16 MiB]\n")
    if result.stderr_truncated:
        err.write(b"[skypty: stderr truncated at 16 MiB]\n")
    if result.timed_out:
        err.write(f"[timed out after {timeout}ms]\n".encode())
        err.flush()
        return EXIT_TIMEOUT
    err.flush()
    return result.exit_code & 0xFF if result.exit_code >= 0 else 1


def _read_stdin(args):
    if not getattr(args, "stdin", False):
        return b""
    data = sys.stdin.buffer.read(STDIN_LIMIT + 1)
    if len(data) > STDIN_LIMIT:
        raise SkyptyError("stdin is larger than 1 MiB")
    return data


def guarded(fn):
    """Turn every expected failure into one clear line and exit code 1."""
    def run(args, parser):
        try:
            return fn(args, parser)
        except (TransportError, IdentityError, RPCError, SkyptyError, OSError) as e:
            if isinstance(e, TimeoutError) or e.__class__.__name__ == "timeout":
                return fail("timed out waiting for the host")
            return fail(str(e) or e.__class__.__name__)
    return run


# -- verbs -------------------------------------------------------------------------------

@guarded
def cmd_exec(args, parser):
    if not args.command:
        return fail("exec needs a command: skypty-client exec PK -- CMD [ARG...]")
    pk = parse_pk(args.pk, "host key")
    if args.via:
        via = args.via[len("tcp://"):] if args.via.startswith("tcp://") else args.via
        via_pk, host, port = parse_target(via, DEFAULT_TCP_PORT)
        if via_pk != pk:
            return fail("--via names a different host key than PK")
        channel, early = open_direct(pk, host, port, args)
    else:
        channel, early = open_remote_via_host(args, pk)
    return run_exec(channel, early, args.command, timeout_ms(args), _read_stdin(args))


@guarded
def cmd_shell(args, parser):
    pk, host, port = parse_target(args.target, args.port or DEFAULT_TCP_PORT)
    if args.command and not args.tty:
        channel, early = open_direct(pk, host, port, args)
        return run_exec(channel, early, args.command, timeout_ms(args), b"")
    from skypty.client.interactive import interactive

    return interactive(lambda: open_direct(pk, host, port, args), attach=args.attach,
                       command=args.command or None)


@guarded
def cmd_start(args, parser):
    from skypty.client.interactive import interactive

    if args.pk:
        pk = parse_pk(args.pk, "host key")
        opener = lambda: open_remote_via_host(args, pk)  # noqa: E731
    else:
        opener = lambda: open_control(args, requestline.PTY)  # noqa: E731
    return interactive(opener, attach=args.attach, command=args.command or None)


def _whitelist_rpc(args):
    channel, early = open_control(args, requestline.WHITELIST)
    return BlockingRPC(channel, early)


@guarded
def cmd_whitelist(args, parser):
    for pk in _whitelist_rpc(args).call("whitelist.Whitelist", T.EMPTY.cls(), T.EMPTY, T.PubKeys):
        print(pk.hex())
    return 0


@guarded
def cmd_whitelist_add(args, parser):
    keys = [parse_pk(k) for k in args.pks]
    _whitelist_rpc(args).call("whitelist.WhitelistAdd", keys, T.PubKeys, T.EMPTY)
    return 0


@guarded
def cmd_whitelist_remove(args, parser):
    keys = [parse_pk(k) for k in args.pks]
    _whitelist_rpc(args).call("whitelist.WhitelistRemove", keys, T.PubKeys, T.EMPTY)
    return 0


@guarded
def cmd_list(args, parser):
    if args.sessions:
        channel, early = open_control(args, requestline.PTY)
        rows = BlockingRPC(channel, early).call("pty.Sessions", T.EMPTY.cls(), T.EMPTY, T.SessionList)
        if not rows:
            print("no sessions")
        for s in rows:
            state = "attached" if s.attached else f"idle {s.idle_seconds}s"
            print(f"{s.id}  {s.owner[:16]}…  {state:<12} {s.command}")
        return 0
    peers = _whitelist_rpc(args).call("host.Peers", T.EMPTY.cls(), T.EMPTY, T.PubKeys)
    for pk in peers:
        print(pk.hex())
    return 0


def _web_url(args):
    url = _whitelist_rpc(args).call("host.WebURL", T.EMPTY.cls(), T.EMPTY, T.STRING)
    if args.visor:
        base, _, query = url.partition("?")
        url = f"{base}/{parse_pk(args.visor).hex()}?{query}"
    return url


@guarded
def cmd_url(args, parser):
    print(_web_url(args))
    return 0


@guarded
def cmd_ui(args, parser):
    import webbrowser

    url = _web_url(args)
    if not webbrowser.open(url):
        print(url)
    return 0


@guarded
def cmd_config(args, parser):
    if args.config_verb != "gen":
        parser.parse_args(["config", "--help"])
        return 1
    from skypty.config import generate_config_file

    if os.path.exists(args.output) and not args.force:
        return fail(f"{args.output} exists; use --force to overwrite it")
    config = generate_config_file(args.output)
    sys.stderr.write(f"wrote {args.output} (pk {config.pk.hex()})\n")
    return 0

"""skypty-client verbs (argument parsing lives in skypty.client.main)."""

import os
import sys

from skypty.client.cmdline import remote_argv
from skypty.client.errors import fail, usage_error
from skypty.client.reach import (
    DEFAULT_TCP_PORT, STDIN_LIMIT, exec_env, guarded, no_key_flags, open_control, open_direct,
    open_remote_via_host, parse_pk, parse_pks, parse_target, read_stdin, timeout_ms,
)
from skypty.client.rpc import BlockingRPC
from skypty.client.transport import TransportError
from skypty.errors import SkyptyError
from skypty.wire import requestline
from skypty.wire import types as T
from skypty.wire.rpc import RPCError

EXIT_TIMEOUT = 124


def run_exec(channel, early, command, timeout, stdin=b"", rpc=None):
    """pty.Exec on an accepted channel; mirrors the exit code.  A host without
    pty.Exec runs the command on a pty instead (skypty.client.classic)."""
    rpc = rpc or BlockingRPC(channel, early)
    channel.settimeout(timeout / 1000.0 + 30)
    out, err = sys.stdout.buffer, sys.stderr.buffer
    req = T.CommandExecReq.cls(name=command[0], arg=list(command[1:]), env=exec_env(), stdin=stdin,
                               timeout_ms=timeout)
    try:
        result = rpc.call("pty.Exec", req, T.CommandExecReq, T.CommandExecResult)
    except RPCError as e:
        if "can't find method pty.Exec" not in str(e) and "can't find service pty.Exec" not in str(e):
            raise
        from skypty.client.classic import run_exec_on_pty

        return run_exec_on_pty(rpc, channel, command, timeout, stdin, out, err, exec_env())
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


def stdin_is_input():
    """Is our stdin something to stream to the command, as ssh would: a pipe,
    a file or a socket?  Not a terminal (nobody piped anything) and not
    another character device such as /dev/null (nothing to send)."""
    import stat

    try:
        return not stat.S_ISCHR(os.fstat(0).st_mode)
    except OSError:  # stdin closed
        return False


def stdin_has_data():
    """Bytes wait on stdin now (a pipe's or socket's FIONREAD, a file's rest),
    without reading them: for a warning only, never for a decision."""
    import fcntl
    import stat
    import struct
    import termios

    try:
        mode = os.fstat(0).st_mode
        if stat.S_ISREG(mode):
            return os.fstat(0).st_size > os.lseek(0, 0, os.SEEK_CUR)
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            return struct.unpack("i", fcntl.ioctl(0, termios.FIONREAD, b"\0" * 4))[0] > 0
    except OSError:
        pass
    return False


def run_exec_streaming(channel, early, command, timeout):
    """The command with our stdin streamed to it (ssh's `host cmd < input`):
    pty.StartPiped, our stdin chunk by chunk, our EOF its EOF; its stdout and
    stderr stay apart; --timeout stops it.  A host without pty.StartPiped
    gets stdin whole (up to 1 MiB) in pty.Exec instead."""
    import time

    from skypty.client.interactive import Link, _pump_pipes

    link = Link(lambda: (channel, early))
    req = T.CommandReq.cls(name=command[0], arg=list(command[1:]), env=exec_env())
    try:
        link.rpc.call("pty.StartPiped", req, T.CommandReq, T.EMPTY)
    except RPCError as e:
        if "can't find method" not in str(e) and "can't find service" not in str(e):
            raise
        stdin = sys.stdin.buffer.read(STDIN_LIMIT + 1)
        if len(stdin) > STDIN_LIMIT:
            raise SkyptyError("stdin is larger than 1 MiB (this host takes stdin whole: "
                              "it has no pty.StartPiped)") from None
        return run_exec(channel, None, command, timeout, stdin, rpc=link.rpc)

    def timed_out():
        try:
            link.rpc.call("pty.Stop", T.EMPTY.cls(), T.EMPTY, T.EMPTY)
        except (RPCError, TransportError, OSError):
            pass  # ending the connection ends the command too
        channel.close()
        sys.stderr.write(f"[timed out after {timeout}ms]\n")
        sys.stderr.flush()
        return EXIT_TIMEOUT

    return _pump_pipes(link, deadline=time.monotonic() + timeout / 1000.0, on_deadline=timed_out)


def run_one_shot(channel, early, command, timeout, args):
    """exec / `shell PK@HOST -- CMD`: stdin streamed when there is one to stream
    (see stdin_is_input), else the one-round-trip pty.Exec; --stdin: read whole."""
    if not getattr(args, "stdin", False) and stdin_is_input():
        return run_exec_streaming(channel, early, command, timeout)
    return run_exec(channel, early, command, timeout, read_stdin(args))


def _want_pty(args):
    if getattr(args, "tty", False) and getattr(args, "no_tty", False):
        raise usage_error("-t and -T contradict each other")
    if getattr(args, "tty", False):
        return True
    return False if getattr(args, "no_tty", False) else None


# -- verbs -------------------------------------------------------------------------------

@guarded
def cmd_exec(args, parser):
    if not args.command:
        raise usage_error("exec needs a command: skypty-client exec PK -- CMD [ARG...]")
    target = args.targets[0]
    if len(args.targets) > 1 or args.json or target.startswith("@"):
        from skypty.client.fleet import cmd_fleet_exec

        if not args.stdin and stdin_has_data():
            sys.stderr.write("skypty-client: stdin is not sent to several hosts, or with --json "
                             "(--stdin sends it to each, up to 1 MiB)\n")
        return cmd_fleet_exec(args)
    if len(target) != 66:  # a name or PK@HOST[:PORT] (skypty.client.hosts)
        from skypty.client.hosts import resolve_target

        resolved = resolve_target(target)
        target, args.scheme = resolved.pk, args.scheme or resolved.scheme
        if resolved.direct and not args.via:
            args.via = f"{resolved.pk}@{resolved.address}"
    pk = parse_pk(target, "host key")
    if args.via:
        via = args.via[len("tcp://"):] if args.via.startswith("tcp://") else args.via
        via_pk, host, port = parse_target(via, DEFAULT_TCP_PORT)
        if via_pk != pk:
            raise usage_error("--via names a different host key than PK")
        channel, early = open_direct(pk, host, port, args)
    else:
        no_key_flags(args, "exec without --via")
        channel, early = open_remote_via_host(args, pk)
    return run_one_shot(channel, early, remote_argv(args.command), timeout_ms(args), args)


@guarded
def cmd_shell(args, parser):
    want_pty = _want_pty(args)
    pk, host, port = parse_target(args.target, args.port or DEFAULT_TCP_PORT)
    command = remote_argv(args.command) if args.command else None
    if command and want_pty is None and not args.attach:  # ssh's "host cmd", captured
        channel, early = open_direct(pk, host, port, args)
        return run_one_shot(channel, early, command, timeout_ms(args), args)
    from skypty.client.interactive import interactive

    return interactive(lambda: open_direct(pk, host, port, args), attach=args.attach, command=command,
                       want_pty=want_pty, escape=args.escape, label=f"{host}:{port}",
                       predict=predict_mode(args, args.target))


@guarded
def cmd_start(args, parser):
    from skypty.client.interactive import interactive

    want_pty = _want_pty(args)
    if args.pk:
        no_key_flags(args, "start PK")
        pk = parse_pk(args.pk, "host key")
        opener = lambda: open_remote_via_host(args, pk)  # noqa: E731
        label = pk.hex()
    else:
        no_key_flags(args, "start")
        opener = lambda: open_control(args, requestline.PTY)  # noqa: E731
        label = "the local host"
    command = remote_argv(args.command) if args.command else None
    return interactive(opener, attach=args.attach, command=command, want_pty=want_pty,
                       escape=args.escape, label=label, predict=predict_mode(args, args.pk))


def predict_mode(args, target):
    """--predict, else the host's `predict` in hosts.toml, else $SKYPTY_PREDICT, else auto."""
    if args.predict:
        return args.predict
    if target and "@" not in target and len(target) != 66:  # a host name
        from skypty.client.hosts import load_hosts

        entry = load_hosts().get(target)
        if entry is not None and entry.predict:
            return entry.predict
    env = os.environ.get("SKYPTY_PREDICT", "")
    if env in ("auto", "always", "never"):
        return env
    if env:
        raise SkyptyError(f"$SKYPTY_PREDICT={env!r}: expected auto, always or never")
    return "auto"


def _whitelist_rpc(args, verb="this verb"):
    no_key_flags(args, verb)
    channel, early = open_control(args, requestline.WHITELIST)
    return BlockingRPC(channel, early)


SOURCE_LABELS = {"own": "own key", "hypervisor": "hypervisor", "config": "config",
                 "runtime": "added at runtime"}


def _missing(error):
    return "can't find method" in str(error) or "can't find service" in str(error)


def _current_whitelist(rpc):
    return set(rpc.call("whitelist.Whitelist", T.EMPTY.cls(), T.EMPTY, T.PubKeys))


@guarded
def cmd_whitelist(args, parser):
    rpc = _whitelist_rpc(args, "whitelist")
    try:
        entries = [(e.pk, SOURCE_LABELS.get(e.source, e.source))
                   for e in rpc.call("whitelist.Sources", T.EMPTY.cls(), T.EMPTY, T.WhitelistEntries)]
    except RPCError as e:
        if not _missing(e):
            raise
        # An older host: the keys without where they come from.
        entries = [(pk, "") for pk in rpc.call("whitelist.Whitelist", T.EMPTY.cls(), T.EMPTY, T.PubKeys)]
    from skypty.client.textsafe import safe

    for pk, label in entries:
        print(f"{pk.hex()}  {safe(label)}".rstrip())
    return 0


def _change_whitelist(args, verb, method, if_listed, if_not_listed, change_listed):
    """Add or remove keys, and say for each key what it did (or that it did nothing).

    Only the keys that change are sent: a reference host refuses a whole
    WhitelistAdd when one key is already there ("skipping append ... Already
    exists"), and a no-op should succeed on every host."""
    keys = parse_pks(args.pks)
    rpc = _whitelist_rpc(args, verb)
    before = _current_whitelist(rpc)
    changing = [pk for pk in keys if (pk in before) == change_listed]
    if changing:
        rpc.call(method, changing, T.PubKeys, T.EMPTY)
    for pk in keys:
        print((if_listed if pk in before else if_not_listed).format(pk=pk.hex()))
    return 0


@guarded
def cmd_whitelist_add(args, parser):
    return _change_whitelist(args, "whitelist-add", "whitelist.WhitelistAdd",
                             "{pk} was already whitelisted (nothing changed)", "added {pk}",
                             change_listed=False)


@guarded
def cmd_whitelist_remove(args, parser):
    return _change_whitelist(args, "whitelist-remove", "whitelist.WhitelistRemove",
                             "removed {pk}", "{pk} was not on the whitelist (nothing to remove)",
                             change_listed=True)


def session_table(rows):
    """pty.Sessions rows -> the lines `list --sessions` prints."""
    if not rows:
        return ["no sessions"]
    from skypty.client.textsafe import safe  # every column is the host's word

    lines = [f"{'ID':<16}  {'OWNER':<17}  {'STATE':<12} COMMAND"]
    for s in rows:
        state = "attached" if s.attached else f"idle {s.idle_seconds}s"
        command = safe(s.command) or "(login shell)"  # started without a command: the host's shell
        lines.append(f"{safe(s.id):<16}  {safe(s.owner[:16])}…  {state:<12} {command}")
    return lines


@guarded
def cmd_list(args, parser):
    if args.sessions:
        no_key_flags(args, "list")
        channel, early = open_control(args, requestline.PTY)
        rows = BlockingRPC(channel, early).call("pty.Sessions", T.EMPTY.cls(), T.EMPTY, T.SessionList)
        print("\n".join(session_table(rows)))
        return 0
    peers = _whitelist_rpc(args, "list").call("host.Peers", T.EMPTY.cls(), T.EMPTY, T.PubKeys)
    for pk in peers:
        print(pk.hex())
    return 0


def _web_url(args):
    url = _whitelist_rpc(args, args.verb).call("host.WebURL", T.EMPTY.cls(), T.EMPTY, T.STRING)
    if not url.startswith(("http://", "https://")) or not url.isprintable() or " " in url:
        # printed, and handed to a browser: only a plain web address
        raise SkyptyError(f"the host answered a web address that is not one: '{url}'")  # fail() escapes it
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

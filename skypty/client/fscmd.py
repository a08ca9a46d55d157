"""`skypty-client fs`: the host's files over SFTP.

``fs mount`` mounts them with FUSE (``skypty.fs``); ``fs umount`` undoes it.
Hosts may be given by name (``skypty.client.hosts``) as well as by key.
``fs pipe PK@HOST[:PORT]`` relays the host's ``dmsgpty/sftp`` service on
stdin/stdout, so any SFTP client can use it, e.g.
``sftp -D "skypty-client fs pipe PK@HOST:2022"``.
"""

import os
import select
import sys

from skypty.client.errors import fail
from skypty.client.reach import DEFAULT_TCP_PORT, guarded, open_direct, parse_pk, parse_target
from skypty.client.identity import control_socket, resolve_secret_key
from skypty.errors import SkyptyError
from skypty.wire import requestline


@guarded
def cmd_fs(args, parser):
    if args.fs_verb == "pipe":
        return pipe(args)
    if args.fs_verb == "mount":
        return mount(args)
    if args.fs_verb == "umount":
        return umount(args)
    parser.parse_args(["fs", "--help"])
    return 1


def _duration(text, option):
    from skypty.durations import DurationError, parse_duration

    try:
        return parse_duration(text, option)
    except DurationError as e:
        raise SkyptyError(str(e)) from None


def mount(args):
    import shlex

    from skypty.fs.mount import Mount, MountError, check_mountpoint, run_mount

    target, mountpoint, name = args.target, args.mountpoint, args.target
    if args.sftp_command:
        argv = shlex.split(args.sftp_command)
        if not argv:
            return fail("--sftp-command is empty")
        import shutil

        if shutil.which(argv[0]) is None:
            return fail(f"--sftp-command: {argv[0]}: command not found")
    try:
        import llfuse  # noqa: F401  # fail early and clearly without it
    except ImportError:
        return fail("fs mount needs the llfuse Python package (pip install llfuse; "
                    "it builds against libfuse-dev and pkg-config)")
    try:
        check_mountpoint(mountpoint)
    except MountError as e:
        return fail(str(e))
    timeout = _duration(args.timeout, "--timeout")
    if args.sftp_command:
        from skypty.fs.link import command_connector

        env = dict(os.environ)
        connect = lambda reactor: command_connector(reactor, argv, env)  # noqa: E731
    elif "@" in target or len(target) != 66:  # PK@HOST[:PORT], or a name (skypty.client.hosts)
        from skypty.client.hosts import resolve_target

        resolved = resolve_target(target, DEFAULT_TCP_PORT)
        pk = parse_pk(resolved.pk, "host key")
        if resolved.direct:
            from skypty.fs.link import noise_tcp_connector

            host, port, sk = resolved.host, resolved.port, resolve_secret_key(args)
            connect = lambda reactor: noise_tcp_connector(reactor, host, port, sk, pk, timeout)  # noqa: E731
        else:
            connect = _via_local_host(args, pk, timeout)
    else:
        connect = _via_local_host(args, parse_pk(target, "host key"), timeout)
    root = args.remote_root.encode("utf-8", "surrogateescape")
    if len(root) > 1:
        root = root.rstrip(b"/")
    job = Mount(connect, mountpoint, name, remote_root=root, read_only=args.ro,
                attr_ttl=_duration(args.attr_ttl, "--attr-ttl"), entry_ttl=_duration(args.entry_ttl, "--entry-ttl"),
                dir_ttl=_duration(args.dir_ttl, "--dir-ttl"), timeout=timeout)
    from skypty.client.textsafe import safe

    return run_mount(job, args.foreground, args.log, printable=safe)


def _via_local_host(args, pk, timeout):
    from skypty.client.errors import proxy_refusal
    from skypty.client.transport import foreign_control_socket
    from skypty.fs.link import control_socket_connector

    network, address = control_socket(args)
    explain = lambda reason, text: proxy_refusal(reason, text, pk.hex(), args.port)  # noqa: E731
    return lambda reactor: control_socket_connector(reactor, network, address, pk, args.port, timeout, explain,
                                                    vet=foreign_control_socket)


def umount(args):
    from skypty.fs.mount import MountError, umount as unmount

    try:
        unmount(args.mountpoint)
    except MountError as e:
        return fail(str(e))
    return 0


def pipe(args):
    pk, host, port = parse_target(args.target, DEFAULT_TCP_PORT)
    channel, early = open_direct(pk, host, port, args, uri=requestline.SFTP)
    channel.settimeout(None)
    out = sys.stdout.buffer
    if early:
        out.write(early)
        out.flush()
    stdin = sys.stdin.fileno()
    stdin_open = True
    while True:
        pending = getattr(channel, "pending", lambda: False)()
        ready = [channel] if pending else select.select([channel] + ([stdin] if stdin_open else []), [], [])[0]
        if channel in ready:
            data = channel.recv()
            if not data:
                return 0
            out.write(data)
            out.flush()
        if stdin_open and stdin in ready:
            data = os.read(stdin, 65536)
            if not data:
                stdin_open = False
                channel.sock.shutdown(1)
            else:
                channel.send(data)

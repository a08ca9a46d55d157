"""`skypty-client fs`: the host's files over SFTP.

``fs pipe PK@HOST[:PORT]`` relays the host's ``dmsgpty/sftp`` service on
stdin/stdout, so any SFTP client can use it, e.g.
``sftp -D "skypty-client fs pipe PK@HOST:2022"``.  ``fs mount``/``umount``
(the FUSE client) are not available in this version yet.
"""

import os
import select
import sys

from skypty.client.commands import DEFAULT_TCP_PORT, fail, guarded, open_direct, parse_target
from skypty.wire import requestline


@guarded
def cmd_fs(args, parser):
    if args.fs_verb == "pipe":
        return pipe(args)
    if args.fs_verb in ("mount", "umount"):
        return fail("fs mount/umount is not available in this version yet; "
                    "use `sftp -D \"skypty-client fs pipe PK@HOST:PORT\"` meanwhile")
    parser.parse_args(["fs", "--help"])
    return 1


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

"""Interactive shells: raw terminal, resize, keep-alive, reattach.

One select() loop, no threads: a pty.Read is always outstanding, keystrokes
become pty.Write calls, SIGWINCH becomes pty.SetPtySize, and a pty.Ping goes
out every 30 s.  On a host with persistent sessions the shell is started
with pty.StartSession; if the link drops, the loop reconnects with backoff
and reattaches with pty.AttachAt at the exact byte it had, so nothing is
printed twice and a gap (if the host's ring overflowed) is reported.
"""

import fcntl
import os
import select
import signal
import struct
import sys
import termios
import time
import tty

from skypty.client.rpc import BlockingRPC, RejectedError
from skypty.client.transport import TransportError
from skypty.wire import types as T
from skypty.wire.rpc import RPCError

PING_INTERVAL = 30.0
READ_SIZE = 64 * 1024  # the most a pty.Read may ask for: fewer round trips
MAX_RECONNECT_WAIT = 10.0
RECONNECT_GIVE_UP = 120.0
LOST_PREFIX = "dmsgpty: output lost: "


def terminal_size(fd):
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
        if rows and cols:
            return rows, cols
    except OSError:
        pass
    return 24, 80


def _env():
    env = [f"TERM={os.environ.get('TERM', 'xterm-256color')}"]
    for key in ("LANG", "LC_ALL", "COLORTERM"):
        if os.environ.get(key):
            env.append(f"{key}={os.environ[key]}")
    return env


def _say(text):
    sys.stderr.write(f"\r\n[skypty: {text}]\r\n")
    sys.stderr.flush()


class Link:
    """One connected pty RPC channel."""

    def __init__(self, opener):
        channel, early = opener()
        self.channel = channel
        self.rpc = BlockingRPC(channel, early)


def _start(link, command, rows, cols, attach):
    """-> (session id or None, offset)."""
    rpc = link.rpc
    size = T.WinSize.cls(rows=rows, cols=cols)
    if attach:
        try:
            result = rpc.call("pty.AttachAt", T.AttachReq.cls(id=attach, offset=0), T.AttachReq, T.AttachResult)
            offset = result.offset
        except RPCError as e:
            if "can't find method" not in str(e):
                raise
            rpc.call("pty.Attach", attach, T.STRING, T.EMPTY)
            offset = 0
        rpc.call("pty.SetPtySize", size, T.WinSize, T.EMPTY)
        return attach, offset
    name = command[0] if command else os.environ.get("SKYPTY_REMOTE_SHELL", "")
    req = T.CommandReq.cls(name=name or "", arg=list(command[1:]) if command else [], size=size, env=_env())
    try:
        sid = rpc.call("pty.StartSession", req, T.CommandReq, T.STRING)
    except RPCError as e:
        if "can't find method" not in str(e):
            raise
        if not req.name:
            req = T.CommandReq.cls(name="/bin/bash", arg=[], size=size, env=_env())
        rpc.call("pty.Start", req, T.CommandReq, T.EMPTY)
        return None, 0
    return sid, 0


def interactive(opener, attach=None, command=None):
    stdin_fd, stdout = sys.stdin.fileno(), sys.stdout.buffer
    is_tty = os.isatty(stdin_fd)
    rows, cols = terminal_size(stdin_fd if is_tty else sys.stdout.fileno())
    link = Link(opener)
    sid, offset = _start(link, command, rows, cols, attach)
    if sid:
        sys.stderr.write(f"[skypty: session {sid}; reattach with --attach {sid}]\r\n")
        sys.stderr.flush()

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    resized = []

    def on_winch(signum, frame):
        resized.append(True)
        try:
            os.write(wake_w, b"w")
        except BlockingIOError:
            pass

    old_handler = signal.signal(signal.SIGWINCH, on_winch)
    saved = termios.tcgetattr(stdin_fd) if is_tty else None
    if is_tty:
        tty.setraw(stdin_fd)
    try:
        while True:
            kind, value = _run(link, stdin_fd, stdout, wake_r, resized, offset)
            if kind == "ended":
                return 0
            offset = value  # the link dropped
            if not sid:
                _say("connection lost")
                return 1
            link = _reattach(opener, sid, offset, stdin_fd if is_tty else sys.stdout.fileno())
            if link is None:
                return 1
            link, offset = link
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, old_handler)
        os.close(wake_r)
        os.close(wake_w)


def _reattach(opener, sid, offset, size_fd):
    """Reconnect and follow *sid* from *offset*; a link that drops again during
    the reattach is just another drop.  -> (link, offset) or None."""
    deadline = time.monotonic() + RECONNECT_GIVE_UP
    while time.monotonic() < deadline:
        link = _reconnect(opener, sid)
        if link is None:
            return None
        try:
            result = link.rpc.call("pty.AttachAt", T.AttachReq.cls(id=sid, offset=offset),
                                   T.AttachReq, T.AttachResult)
            rows, cols = terminal_size(size_fd)
            link.rpc.call("pty.SetPtySize", T.WinSize.cls(rows=rows, cols=cols), T.WinSize, T.EMPTY)
        except (TransportError, OSError):
            link.channel.close()
            continue
        if result.lost:
            _say(f"{result.lost} bytes of output were lost while disconnected")
        return link, result.offset
    return None


def _reconnect(opener, sid):
    delay, deadline = 0.0, time.monotonic() + RECONNECT_GIVE_UP
    _say(f"connection lost; reattaching session {sid}")
    while time.monotonic() < deadline:
        try:
            return Link(opener)
        except RejectedError as e:
            _say(str(e))
            return None
        except (TransportError, OSError):
            time.sleep(delay)  # back off between dials; nothing else is waiting
            delay = min(max(delay * 2, 0.1), MAX_RECONNECT_WAIT)
    _say("could not reconnect; the session may still be alive on the host")
    return None


def _run(link, stdin_fd, stdout, wake_r, resized, offset):
    """Drive one link until the shell ends or the link drops.
    -> ('ended', None) | ('dropped', bytes of output received so far)."""
    rpc = link.rpc
    stdin_open = True
    read_seq = rpc.start("pty.Read", READ_SIZE, T.INT, T.BYTES)
    next_ping = time.monotonic() + PING_INTERVAL
    try:
        while True:
            while rpc._early or getattr(link.channel, "pending", lambda: False)():
                rpc.pump()
            # Results of calls we care about.
            if read_seq in rpc.results:
                value = rpc.results.pop(read_seq)
                if isinstance(value, RPCError):
                    message = str(value)
                    if message.startswith(LOST_PREFIX):
                        lost = int(message[len(LOST_PREFIX):].split()[0])
                        _say(f"{lost} bytes of output were lost (this client fell behind)")
                        offset += lost
                    else:
                        link.channel.close()
                        return ("ended", None)
                else:
                    stdout.write(value)
                    stdout.flush()
                    offset += len(value)
                read_seq = rpc.start("pty.Read", READ_SIZE, T.INT, T.BYTES)
            for seq in [s for s in rpc.results if s != read_seq]:
                rpc.results.pop(seq)  # writes, pings, resizes: the read tells us when it ends
            if resized:
                resized.clear()
                rows, cols = terminal_size(stdin_fd)
                rpc.start("pty.SetPtySize", T.WinSize.cls(rows=rows, cols=cols), T.WinSize, T.EMPTY)
            now = time.monotonic()
            if now >= next_ping:
                rpc.start("pty.Ping", T.EMPTY.cls(), T.EMPTY, T.EMPTY)
                next_ping = now + PING_INTERVAL
            watch = [link.channel, wake_r] + ([stdin_fd] if stdin_open else [])
            ready, _, _ = select.select(watch, [], [], max(0.0, next_ping - now))
            if wake_r in ready:
                os.read(wake_r, 64)
            if stdin_open and stdin_fd in ready:
                data = os.read(stdin_fd, 65536)
                if not data:
                    stdin_open = False  # piped input ended; the shell's output still comes
                    continue
                rpc.start("pty.Write", data, T.BYTES, T.INT)
            if link.channel in ready:
                if not rpc.pump():
                    link.channel.close()
                    return ("dropped", offset)
    except (OSError, TransportError):
        link.channel.close()
        return ("dropped", offset)

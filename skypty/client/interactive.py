"""Interactive shells: raw terminal, resize, keep-alive, reattach, exit status.

One select() loop, no threads: a pty.Read is always outstanding, keystrokes
become pty.Write calls, SIGWINCH becomes pty.SetPtySize, and a pty.Ping goes
out every 30 s.  On a host with persistent sessions the shell is started
with pty.StartSession; if the link drops, the loop reconnects with backoff
and reattaches with pty.AttachAt at the exact byte it had, so nothing is
printed twice and a gap (if the host's ring overflowed) is reported.

Like ssh: keys typed while connecting are kept (the terminal switches to raw
mode without flushing them); the escape character (``~.``, ``~?``) works at
the start of a line; the remote exit status becomes ours (skypty's
``pty.ExitStatus``; 0 from a host without it); and without a terminal on
stdin no pty is asked for at all: the command gets our stdin as a pipe
(skypty's ``pty.StartPiped``), EOF included.
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

from skypty.client.errors import ClientError, explain_rpc, raise_if_revoked
from skypty.client.escape import DISCONNECT, SHOW_HELP, EscapeFilter
from skypty.client.linkwatch import READ_SIZE, START_WINDOW, ContactWatch, ReadWindow, contact_timers
from skypty.client.rpc import BlockingRPC, RejectedError
from skypty.client.transport import CONNECT_TIMEOUT, TransportError, wait_for_fd
from skypty.wire import types as T
from skypty.wire.rpc import RPCError
from skypty.wire.types import LOST_PREFIX, SKIP_PREFIX

PING_INTERVAL = 30.0
READ_WINDOW = 16  # pty.Reads we would keep in flight (skypty's pty.ReadAhead; others: 1)
MAX_RECONNECT_WAIT = 0.5  # between attempts: output must resume soon after the link does
ATTEMPT_TIMEOUT = 2.0  # one reattach attempt (a dead path hangs; a live one answers in a few RTTs)
RECONNECT_GIVE_UP = 300.0  # the host's default session TTL
EXIT_ESCAPED = 255  # "~." (ssh's code for a connection it closed)
CTRL_D = b"\x04"
# Piped input on a pty ends with ^D, again each time the host has been quiet
# this long: a ^D that arrives before a readline shell has set up its
# terminal is lost (the kernel turned it into an end-of-line the shell never
# reads), and a ^D behind a half line only ends that line.
CTRL_D_REPEAT = 1.0
MAX_UNANSWERED_WRITES = 4096  # keystrokes kept for their acknowledgement (predictive echo)


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
    from skypty.client.textsafe import safe  # reasons can carry the host's words

    line = f"\r\n[skypty: {safe(text)}]\r\n"
    _local_line(line)
    sys.stderr.write(line)
    sys.stderr.flush()


_echo = []  # the running session's LocalEcho, if it predicts


def _local_line(text):
    """Our own text is about to reach the terminal: predictions off it first,
    and the emulator told (it must see all the terminal sees)."""
    if _echo:
        out = _echo[0].core.local_output(text.encode(), time.monotonic())
        if out:
            sys.stdout.buffer.write(out)
            sys.stdout.buffer.flush()


class LocalEcho:
    """The read loop's side of skypty.client.predict: which read method
    (skypty's pty.ReadFlagged carries the pty's echo modes; a reference host
    has only pty.Read), the write acknowledgements (RTT samples and the
    predictions' deadlines)."""

    def __init__(self, mode, rows, cols):
        from skypty.client.predict import Predictor

        self.core = Predictor(rows, cols, mode)
        self.flagged = True  # False once the host says it has no pty.ReadFlagged
        self.reading_flagged = False  # the read in flight is a pty.ReadFlagged
        self.writes = {}  # pty.Write seq -> (batch, sent at)

    def read_method(self):
        """The method of the next read: the flagged one only while predicting,
        so a session that does not predict (auto on a fast path) reads as ever."""
        self.reading_flagged = self.flagged and self.core.active
        if not self.reading_flagged:
            self.core.set_flags(0)  # no news of the tty's modes from here on
        return "pty.ReadFlagged" if self.reading_flagged else "pty.Read"

    def new_link(self, now):
        """A new connection: the old one's writes will never be acknowledged."""
        self.writes.clear()
        self.core.forget_keys(now)

    def output(self, value, now):
        """A read's reply -> (the host's bytes, the bytes for the terminal)."""
        if self.reading_flagged:
            if not value:
                return value, value
            self.core.set_flags(value[0])
            value = value[1:]
        return value, self.core.host_output(value, now)

    def read_refused(self, error):
        """True when *error* says the host has no pty.ReadFlagged (then pty.Read it is)."""
        if self.reading_flagged and _missing(error):
            self.flagged = False
            return True
        return False

    def sent(self, seq, data, now):
        if len(self.writes) >= MAX_UNANSWERED_WRITES:  # a host that never answers them: forget them
            self.new_link(now)
        out, batch = self.core.keys(data, now)
        self.writes[seq] = (batch, now)
        return out

    def replies(self, results, now):
        out = []
        for seq in [s for s in self.writes if s in results]:
            batch, sent = self.writes.pop(seq)
            out.append(self.core.rtt_sample(now - sent, now))
            self.core.acked(batch, now)
        return b"".join(out)


def _missing(error):
    return "can't find method" in str(error) or "can't find service" in str(error)


class Link:
    """One connected pty RPC channel.  *timeout*: for connecting (a reattach
    tries often, each attempt briefly); the channel then keeps its default."""

    def __init__(self, opener, timeout=None):
        channel, early = opener(timeout=timeout) if timeout else opener()
        sock = getattr(channel, "sock", None)
        if sock is not None:
            from skypty.wire.netopts import quick_retransmits

            quick_retransmits(sock)  # keys and pings get through soon after an outage
        self.channel = channel
        self.rpc = BlockingRPC(channel, early)


def _explained(error, sid=None):
    text = explain_rpc(str(error), sid)
    return ClientError(text) if text else error


def _start(link, command, rows, cols, attach):
    """-> (session id or None, offset)."""
    rpc = link.rpc
    size = T.WinSize.cls(rows=rows, cols=cols)
    if attach:
        try:
            offset, replayed = _attach_fresh(rpc, attach)
        except RPCError as e:
            raise _explained(e, attach) from None
        rpc.call("pty.SetPtySize", size, T.WinSize, T.EMPTY)
        sys.stderr.write(f"[skypty: reattached session {attach} ({replayed})]\r\n")
        sys.stderr.flush()
        return attach, offset
    name = command[0] if command else os.environ.get("SKYPTY_REMOTE_SHELL", "")
    req = T.CommandReq.cls(name=name or "", arg=list(command[1:]) if command else [], size=size, env=_env())
    try:
        sid = rpc.call("pty.StartSession", req, T.CommandReq, T.STRING)
    except RPCError as e:
        if not _missing(e):
            raise
        if not req.name:
            req = T.CommandReq.cls(name="/bin/bash", arg=[], size=size, env=_env())
        rpc.call("pty.Start", req, T.CommandReq, T.EMPTY)
        return None, 0
    return sid, 0


def _attach_fresh(rpc, sid):
    """Attach a client that has none of *sid*'s output: from where its screen
    starts (skypty's pty.AttachScreen), else the whole ring (pty.AttachAt at 0,
    then the reference's pty.Attach).  -> (offset, what is replayed)."""
    for method, arg, arg_type in (("pty.AttachScreen", sid, T.STRING),
                                  ("pty.AttachAt", T.AttachReq.cls(id=sid, offset=0), T.AttachReq)):
        try:
            result = rpc.call(method, arg, arg_type, T.AttachResult)
        except RPCError as e:
            if not _missing(e):
                raise
            continue
        if not result.end:
            return result.offset, "replaying its output"
        replayed = f"{result.end - result.offset} bytes replayed"
        if result.offset > 0:  # an older prefix is not shown (or was lost from the ring)
            replayed += f": its current screen; {result.offset} earlier bytes skipped"
        return result.offset, replayed
    rpc.call("pty.Attach", sid, T.STRING, T.EMPTY)
    return 0, "replaying its output"


def exit_status(link):
    """The remote exit status (skypty's pty.ExitStatus); 0 from a host without it."""
    try:
        return link.rpc.call("pty.ExitStatus", T.EMPTY.cls(), T.EMPTY, T.INT) & 0xFF
    except RPCError as e:
        if _missing(e):
            return 0  # a reference host cannot tell: today's behaviour
        return 0 if str(e) == "no active pty session" else 1
    except (TransportError, OSError):
        return 0
    finally:
        link.channel.close()


def interactive(opener, attach=None, command=None, want_pty=None, escape=b"~", label="the host",
                predict="never"):
    """Run a shell or command; -> our exit code.

    *want_pty*: True (-t), False (-T) or None (a pty when stdin is a terminal).
    """
    stdin_fd = sys.stdin.fileno()
    is_tty = os.isatty(stdin_fd)
    use_pty = want_pty if want_pty is not None else is_tty
    if attach:
        use_pty = True  # a persistent session is a pty
    if not use_pty:
        return piped(opener, command)
    return _on_pty(opener, attach, command, is_tty, escape if is_tty else None, label,
                   predict=predict if is_tty else "never")


def _on_pty(opener, attach, command, is_tty, escape, label, link=None, ctrl_d_at_eof=False, predict="never"):
    stdin_fd, stdout = sys.stdin.fileno(), sys.stdout.buffer
    size_fd = stdin_fd if is_tty else sys.stdout.fileno()
    rows, cols = terminal_size(size_fd)
    if link is None:
        link = Link(opener)
    sid, offset = _start(link, command, rows, cols, attach)
    if sid and not attach:
        from skypty.client.textsafe import safe  # the id is the host's

        sys.stderr.write(f"[skypty: session {safe(sid)}; reattach with --attach {safe(sid)}]\r\n")
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
        # TCSANOW, not setraw's default TCSAFLUSH: what was typed while we
        # connected is still in the input queue, and it is the user's.
        tty.setraw(stdin_fd, termios.TCSANOW)
    keys = EscapeFilter(escape)
    echo = LocalEcho(predict, rows, cols) if predict in ("auto", "always") else None
    if echo is not None:
        _echo[:] = [echo]
    try:
        while True:
            if echo is not None:
                echo.new_link(time.monotonic())
            kind, value = _run(link, stdin_fd, stdout, wake_r, resized, offset, keys, ctrl_d_at_eof, echo,
                               persistent=bool(sid), label=label)
            if echo is not None:  # nothing predicted may stay on the screen
                _show(stdout, echo.core.clear(time.monotonic()))
            if kind == "ended":
                return exit_status(link)
            if kind == "escaped":
                link.channel.close()
                where = f"; the session lives on: --attach {sid}" if sid else ""
                _say(f"disconnected from {label}{where}")
                return EXIT_ESCAPED
            offset = value  # the link dropped, or (a persistent session) went silent
            if not sid:
                _say("connection lost")
                return 1
            why = f"no contact with {label} for {contact_timers()[2]:.0f} s" if kind == "dead" else "connection lost"
            link = _reattach(opener, sid, offset, size_fd, why)
            if link is None:
                return 1
            link, offset = link
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, old_handler)
        _echo.clear()
        os.close(wake_r)
        os.close(wake_w)


def _reattach(opener, sid, offset, size_fd, why="connection lost"):
    """Reconnect and follow *sid* from *offset*; a link that drops again during
    the reattach is just another drop.  -> (link, offset) or None."""
    deadline = time.monotonic() + RECONNECT_GIVE_UP
    _say(f"{why}; reattaching session {sid}")
    while time.monotonic() < deadline:
        link = _reconnect(opener, sid)
        if link is None:
            return None
        try:
            rows, cols = terminal_size(size_fd)
            attach_seq = link.rpc.start("pty.AttachAt", T.AttachReq.cls(id=sid, offset=offset),
                                        T.AttachReq, T.AttachResult)
            size_seq = link.rpc.start("pty.SetPtySize", T.WinSize.cls(rows=rows, cols=cols), T.WinSize, T.EMPTY)
            result = link.rpc.wait(attach_seq)
            link.rpc.wait(size_seq)
            link.channel.settimeout(CONNECT_TIMEOUT)  # attached: the attempt's short timeout is over
        except RPCError as e:
            link.channel.close()
            _say(str(_explained(e, sid)))
            return None
        except (TransportError, OSError):
            link.channel.close()
            continue
        if result.lost:
            _say(f"{result.lost} bytes of output were lost while disconnected")
        replayed = f"{result.end - result.offset} bytes replayed" if result.end else "continuing"
        _say(f"reattached session {sid} ({replayed})")
        return link, result.offset
    return None


# Why a local host could not reach the session's host that may pass (its dmsg
# session to the server died with the link and is being replaced, discovery
# was out of reach); the others (not whitelisted, nothing on that port) stay.
PASSING_PROXY_REASONS = {"no-answer", "timeout", "unreachable", "no-shared-server", "not-in-discovery",
                         "discovery-unavailable", "no-overlay", "failed", ""}


def _reconnect(opener, sid):
    delay, deadline = 0.0, time.monotonic() + RECONNECT_GIVE_UP
    said = None
    while time.monotonic() < deadline:
        try:
            return Link(opener, ATTEMPT_TIMEOUT)
        except (RejectedError, ClientError) as e:
            if getattr(e, "reason", None) not in PASSING_PROXY_REASONS:
                _say(str(e))  # refused now: retrying will not help
                return None
            if str(e) != said:
                said = str(e)
                _say(f"{said}; still trying")
            time.sleep(delay)
            delay = min(max(delay * 2, 0.1), MAX_RECONNECT_WAIT)
        except (TransportError, OSError):
            time.sleep(delay)  # back off between dials; nothing else is waiting
            delay = min(max(delay * 2, 0.1), MAX_RECONNECT_WAIT)
    _say("could not reconnect; the session may still be alive on the host")
    return None


def _run(link, stdin_fd, stdout, wake_r, resized, offset, keys, ctrl_d_at_eof, echo=None, persistent=False,
         label="the host"):
    """Drive one link until the shell ends, the link drops or the user escapes.
    -> ('ended', None) | ('escaped', None) | ('dropped', bytes of output received so far)
    | ('dead', bytes so far): a persistent session's path went silent.

    Every keystroke passes through here twice (the key, then its echo), so
    the loop does little per turn: one poll() on fds registered once, and
    the Read replies written out before the next pty.Reads are sent.  With
    *echo* (LocalEcho), keystrokes are also shown at once (predicted) and the
    host's output is reconciled with them on its way to the terminal."""
    rpc, channel = link.rpc, link.channel
    results = rpc.results
    pending = getattr(channel, "pending", None)
    channel_fd = channel.fileno()
    poller = select.poll()
    poller.register(channel_fd, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    poller.register(stdin_fd, select.POLLIN)
    now = time.monotonic()
    reads = ReadWindow(limit=1)
    flagged = {}  # read seq -> it is a pty.ReadFlagged (its reply starts with the tty's modes)
    # Asked before the first read, so a host that grants a window already
    # treats it so; the answer (or "can't find method") comes with the first reply.
    ahead_seq = rpc.start("pty.ReadAhead", READ_WINDOW, T.INT, T.INT)
    started = now
    reads.sent(_start_read(rpc, echo, flagged), now)
    quiet_ping, notice_after, dead_after = contact_timers()
    contact = ContactWatch(now, quiet_ping, notice_after, dead_after if persistent else None)
    pings = {}  # seq -> when it was sent: round trips for the read window
    ctrl_d_at = None  # piped stdin has ended: when to send ^D (again)
    try:
        while True:
            while rpc._early or (pending is not None and pending()):
                rpc.pump()
            if results:
                now = time.monotonic()
                if ahead_seq in results:
                    granted = results.pop(ahead_seq)
                    reads.limit = granted if isinstance(granted, int) and granted > 1 else 1
                    reads.size = min(reads.limit, START_WINDOW)
                    reads.rtt_sample(now - started)  # answered at once: a bare round trip, before any flood
                ended, offset = _deliver(reads.ready(results, now, with_seq=True), stdout, offset, echo, flagged)
                if ended:
                    return ("ended", None)
                if results:
                    if echo is not None and echo.writes:
                        _show(stdout, echo.replies(results, now))
                    for seq in [s for s in results if s not in reads]:
                        value = results.pop(seq)  # writes, pings, resizes: the reads say when it ends
                        sent_at = pings.pop(seq, None)
                        if sent_at is not None and not isinstance(value, RPCError):
                            reads.rtt_sample(now - sent_at)
                while reads.wanted() > 0:
                    reads.sent(_start_read(rpc, echo, flagged), now)
            if resized:
                resized.clear()
                rows, cols = terminal_size(stdin_fd)
                rpc.start("pty.SetPtySize", T.WinSize.cls(rows=rows, cols=cols), T.WinSize, T.EMPTY)
                if echo is not None:
                    _show(stdout, echo.core.resize(rows, cols, time.monotonic()))
            now = time.monotonic()
            if now >= contact.deadline():
                if contact.silence(now) >= quiet_ping and _readable(channel):
                    # we were busy (a slow terminal), not the link: it has data for us
                    silence = contact.heard(now)
                    if silence is not None:
                        _say(f"back in contact with {label} after {silence:.0f} s")
                for action in contact.due(now):
                    if action == "ping":
                        pings = {seq: t for seq, t in pings.items() if now - t < 60}  # unanswered: forget
                        pings[rpc.start("pty.Ping", T.EMPTY.cls(), T.EMPTY, T.EMPTY)] = now
                    elif action == "silent":
                        _say(f"no contact with {label} for {contact.silence(now):.0f} s")
                    elif action == "dead":
                        channel.close()
                        return ("dead", offset)
            if ctrl_d_at is not None and now >= ctrl_d_at:
                rpc.start("pty.Write", CTRL_D, T.BYTES, T.INT)
                ctrl_d_at = now + CTRL_D_REPEAT
            wake_at = contact.deadline() if ctrl_d_at is None else min(contact.deadline(), ctrl_d_at)
            if echo is not None:
                deadline = echo.core.next_deadline()
                if deadline is not None:
                    if deadline <= now:
                        _show(stdout, echo.core.tick(now))
                    else:
                        wake_at = min(wake_at, deadline)
            for fd, _ in poller.poll(max(0.0, wake_at - now) * 1000 + 1):
                if fd == channel_fd:
                    if not rpc.pump():
                        channel.close()
                        return ("dropped", offset)
                    silence = contact.heard(time.monotonic())
                    if silence is not None:
                        _say(f"back in contact with {label} after {silence:.0f} s")
                    if ctrl_d_at is not None:
                        ctrl_d_at = time.monotonic() + CTRL_D_REPEAT  # the host is busy: not yet
                elif fd == stdin_fd:
                    data = os.read(stdin_fd, 65536)
                    if not data:
                        poller.unregister(stdin_fd)  # piped input ended; the shell's output still comes
                        if ctrl_d_at_eof:
                            ctrl_d_at = time.monotonic()
                        continue
                    data, actions = keys.feed(data)
                    if data:
                        seq = rpc.start("pty.Write", data, T.BYTES, T.INT)
                        if echo is not None:
                            _show(stdout, echo.sent(seq, data, time.monotonic()))
                    if actions:
                        if SHOW_HELP in actions:
                            _local_line("\r\n" + keys.help_text())
                            sys.stderr.write("\r\n" + keys.help_text())
                            sys.stderr.flush()
                        if DISCONNECT in actions:
                            return ("escaped", None)
                elif fd == wake_r:
                    os.read(wake_r, 64)
    except (OSError, TransportError):
        channel.close()
        return ("dropped", offset)


def _readable(channel):
    pending = getattr(channel, "pending", None)
    return bool(pending is not None and pending()) or wait_for_fd(channel, 0)


def _start_read(rpc, echo, flagged):
    """Send the next read (pty.ReadFlagged while predicting); -> its seq."""
    if echo is None:
        return rpc.start("pty.Read", READ_SIZE, T.INT, T.BYTES)
    seq = rpc.start(echo.read_method(), READ_SIZE, T.INT, T.BYTES)
    flagged[seq] = echo.reading_flagged
    return seq


def _deliver(replies, stdout, offset, echo=None, flagged=None):
    """Write the Read replies [(seq, value)] (in the order the reads were
    sent) to the terminal, through the prediction if any; -> (the shell
    ended, bytes of output counted so far)."""
    out = []

    def flush():
        if out:
            stdout.write(out[0] if len(out) == 1 else b"".join(out))
            stdout.flush()
            out.clear()

    for seq, value in replies:
        if echo is not None:
            echo.reading_flagged = flagged.pop(seq, False)  # how this read was asked
        if not isinstance(value, RPCError):
            if echo is not None:
                value, shown = echo.output(value, time.monotonic())
                out.append(shown)
            else:
                out.append(value)
            offset += len(value)
            continue
        if echo is not None and echo.read_refused(value):
            continue  # a host without pty.ReadFlagged: pty.Read from now on
        text = str(value)
        if text.startswith(SKIP_PREFIX):
            offset += _count(text, SKIP_PREFIX)  # dropped for our Ctrl-C: counted, not shown
            continue
        flush()  # what came before the notice or the end is shown first
        if text.startswith(LOST_PREFIX):
            lost = _count(text, LOST_PREFIX)
            _say(f"{lost} bytes of output were lost (this client fell behind)")
            offset += lost
        else:
            raise_if_revoked(value)
            return True, offset
    flush()
    return False, offset


def _count(text, prefix):
    """The byte count in a host's "<prefix>N bytes" (0 if it is not one: a host's words are not trusted)."""
    words = text[len(prefix):].split()
    return int(words[0]) if words and words[0].isdigit() and len(words[0]) < 19 else 0


def _show(stdout, data):
    if data:
        stdout.write(data)
        stdout.flush()


# -- no terminal: pipes, as ssh without -t -------------------------------------------------

def piped(opener, command):
    """The command (or the host's shell) without a pty: our stdin streams to it
    and our EOF is its EOF; its stdout and stderr stay apart.  -> exit code."""
    link = Link(opener)
    rpc = link.rpc
    name = command[0] if command else ""
    req = T.CommandReq.cls(name=name, arg=list(command[1:]) if command else [], env=_env())
    try:
        rpc.call("pty.StartPiped", req, T.CommandReq, T.EMPTY)
    except RPCError as e:
        if not _missing(e):
            raise
        # An older host: only ptys.  Keep streaming; our EOF becomes ^D.
        _say("this host cannot run a command without a pty (a reference host, or an older skypty): "
             "using one")
        return _on_pty(opener, None, command, False, None, "the host", link=link, ctrl_d_at_eof=True)
    return _pump_pipes(link)


def _pump_pipes(link, deadline=None, on_deadline=None):
    """-> the exit code; at *deadline* (time.monotonic()), on_deadline()'s."""
    rpc, channel = link.rpc, link.channel
    stdin_fd = sys.stdin.fileno()
    out, err = sys.stdout.buffer, sys.stderr.buffer
    reads = {rpc.start("pty.Read", READ_SIZE, T.INT, T.BYTES): ("pty.Read", out),
             rpc.start("pty.ReadStderr", READ_SIZE, T.INT, T.BYTES): ("pty.ReadStderr", err)}
    stdin_open = True
    try:
        while reads:
            while rpc._early or getattr(channel, "pending", lambda: False)():
                rpc.pump()
            for seq in [s for s in rpc.results if s in reads]:
                value = rpc.results.pop(seq)
                method, sink = reads.pop(seq)
                if isinstance(value, RPCError):
                    raise_if_revoked(value)
                    continue  # EOF on that stream
                sink.write(value)
                sink.flush()
                reads[rpc.start(method, READ_SIZE, T.INT, T.BYTES)] = (method, sink)
            for seq in [s for s in rpc.results if s not in reads]:
                rpc.results.pop(seq)  # writes: the reads say when it ends
            if not reads:
                break
            watch = [channel] + ([stdin_fd] if stdin_open else [])
            wait = PING_INTERVAL
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return on_deadline()
            ready, _, _ = select.select(watch, [], [], min(wait, PING_INTERVAL))
            if stdin_open and stdin_fd in ready:
                data = os.read(stdin_fd, 65536)
                if data:
                    rpc.start("pty.Write", data, T.BYTES, T.INT)
                else:
                    stdin_open = False
                    rpc.start("pty.CloseStdin", T.EMPTY.cls(), T.EMPTY, T.EMPTY)
            if channel in ready and not rpc.pump():
                raise TransportError("the host closed the connection")
    except BrokenPipeError:
        channel.close()
        raise
    except OSError as e:
        channel.close()
        raise TransportError(f"connection failed: {e.strerror or e}") from None
    return exit_status(link)

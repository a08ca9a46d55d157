"""Shells on real ptys, for pty.Start / pty.Read / pty.Write / pty.Stop.

A PtyProcess owns one child on a pty: the child gets its own session and the
pty as controlling terminal (skypty.host.spawn: posix_spawn, no copy of the
host; ``spawnProcess(usePTY=True)`` where that is unavailable).  Its output goes to
a sink: a DirectReader (bounded queue with back-pressure, for the plain
pty.Read RPC) or a persistent session's ring (skypty.host.persist).

A PipeProcess is the same child without a terminal (skypty's
``pty.StartPiped``, for a client whose stdin is not a tty, as ``ssh`` without
``-t``): stdin, stdout and stderr are pipes, and closing stdin is the EOF.

Both start in the user's home directory, as a login does, not in the
daemon's working directory.
"""

import collections
import fcntl
import os
import pwd
import re
import shutil
import signal
import struct
import termios

from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from zope.interface import Interface, implementer

from skypty.errors import SkyptyError
from skypty.host import spawn

MAX_READ = 64 * 1024
COALESCE = 0.005  # a burst: output less than this apart (DirectReader)
MAX_HOLD = 0.05   # the longest output waits to fill a read
STOP_GRACE = 2.0


class ShellEnded(EOFError):
    """The shell exited and every byte of its output has been read."""


class SpawnError(SkyptyError):
    pass


class IOutputSink(Interface):
    def output_received(data):
        """Bytes the shell wrote."""

    def output_ended(status):
        """The shell was reaped; *status* is its exit code or -signal."""


def default_shell():
    shell = os.environ.get("SHELL")
    if shell and os.access(shell, os.X_OK):
        return shell
    return shutil.which("bash") or "/bin/sh"


def build_env(client_env):
    """The host's environment with the client's entries (TERM, LANG...) on top."""
    env = dict(os.environ)
    for entry in client_env or ():
        if isinstance(entry, str) and "=" in entry and not entry.startswith("="):
            name, value = entry.split("=", 1)
            if "\0" not in name + value:
                env[name] = value
    return env


def home_directory(env):
    """Where a shell or command starts: $HOME, else the passwd entry's home, else /."""
    candidates = [env.get("HOME")]
    try:
        candidates.append(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        pass
    for path in candidates:
        if path and os.path.isdir(path):
            return path
    return "/"


def resolve_command(name, env):
    """Absolute path of *name*, or SpawnError saying what is missing."""
    name = name or default_shell()
    if "/" in name:
        path = name
    else:
        path = shutil.which(name, path=env.get("PATH", os.defpath))
    if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise SpawnError(f'exec: "{name}": executable file not found in $PATH')
    return path


# pty.ReadFlagged's first byte: the pty's line discipline modes, for the
# client's predictive echo (skypty.client.predict has the same bits)
TTY_KNOWN, TTY_ECHO, TTY_ICANON = 0x80, 0x01, 0x02


def tty_mode(fd):
    """The ECHO/ICANON modes of the pty whose master is *fd* (a master's
    termios are its slave's), as TTY_* bits; 0 when not a terminal."""
    try:
        lflag = termios.tcgetattr(fd)[3]
    except (termios.error, OSError, ValueError):
        return 0
    return TTY_KNOWN | (TTY_ECHO if lflag & termios.ECHO else 0) | (TTY_ICANON if lflag & termios.ICANON else 0)


def set_winsize(fd, rows, cols, xpixel=0, ypixel=0):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, xpixel, ypixel))


class _PtyProtocol(protocol.ProcessProtocol):
    def __init__(self, owner):
        self.owner = owner

    def childDataReceived(self, fd, data):
        self.owner._output(data)

    def processEnded(self, reason):
        self.owner._ended(reason)


def _drain_on_read(transport, limit=64 * 1024):
    """Read spawnProcess's pty master (the fallback) until it is empty (up
    to *limit*, one delivery: the output queue's bound stays "one chunk over
    the mark") on each wake-up, as skypty.host.spawn's streams do.

    The kernel hands a pty master out in pieces of at most ~4 KiB; Twisted
    reads one piece per reactor iteration, so a busy terminal costs one
    iteration (and one delivery downstream) per 4 KiB.
    """
    import errno as _errno

    one_read = transport.doRead

    def doRead():
        chunks, total = [], 0
        while total < limit:
            try:
                data = os.read(transport.fd, limit - total)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == _errno.EINTR:
                    continue
                break  # EIO once the child side is closed: let Twisted see it
            if not data:
                break
            chunks.append(data)
            total += len(data)
        if not chunks:
            return one_read()  # nothing, or the end: Twisted's own handling
        transport.proto.childDataReceived(1, b"".join(chunks))
        return None

    transport.doRead = doRead


class PtyProcess:
    """One child process on a pty."""

    log = Logger()

    def __init__(self, reactor, sink):
        self.reactor = reactor
        self.sink = sink
        self.transport = None
        self.pid = None
        self.status = None
        self._ended_waiters = []
        self._kill_call = None

    @classmethod
    def spawn(cls, reactor, name, args=(), env=(), rows=None, cols=None, cwd=None, sink=None):
        """Start *name* with *args*; argv[0] is *name* as the client gave it."""
        full_env = build_env(env)
        path = resolve_command(name, full_env)
        self = cls(reactor, sink)
        argv = [name or path, *args]
        cwd = cwd or home_directory(full_env)
        try:
            if spawn.can_spawn():
                self.transport = spawn.spawn_pty(reactor, _PtyProtocol(self), path, argv, full_env, cwd)
            else:
                self.transport = reactor.spawnProcess(_PtyProtocol(self), path, argv, env=full_env,
                                                      path=cwd, usePTY=True)
                _drain_on_read(self.transport)
        except (OSError, error.ProcessExitedAlready) as e:
            raise SpawnError(f"cannot start {name}: {e}") from None
        self.pid = self.transport.pid
        if rows and cols:
            self.resize(rows, cols)
        return self

    @property
    def running(self):
        return self.status is None

    def resize(self, rows, cols, xpixel=0, ypixel=0):
        if self.running and self.transport is not None:
            try:
                set_winsize(self.transport.fileno(), rows, cols, xpixel, ypixel)
            except (OSError, ValueError):
                pass  # the pty is already gone; the end is on its way

    def write(self, data):
        if not self.running:
            raise ShellEnded("the shell has ended")
        self.transport.write(data)
        return len(data)

    def tty_mode(self):
        """TTY_* bits of this pty (0 once it is gone)."""
        if not self.running or self.transport is None:
            return 0
        try:
            return tty_mode(self.transport.fileno())
        except (OSError, ValueError, AttributeError):
            return 0

    def pause_output(self):
        if self.running:
            self.transport.pauseProducing()

    def resume_output(self):
        if self.running:
            self.transport.resumeProducing()

    def stop(self):
        """Hang up the whole process group; SIGKILL it if it lingers."""
        if not self.running or self.pid is None:
            return
        self._signal_group(signal.SIGHUP)
        self.resume_output()  # a paused master would hide the EIO that ends us
        if self._kill_call is None:
            self._kill_call = self.reactor.callLater(STOP_GRACE, self._signal_group, signal.SIGKILL)

    def _signal_group(self, sig):
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def when_ended(self):
        if self.status is not None:
            return defer.succeed(self.status)
        d = defer.Deferred()
        self._ended_waiters.append(d)
        return d

    # -- from the process protocol --
    def _output(self, data):
        if self.sink is not None:
            self.sink.output_received(data)

    def _ended(self, reason):
        value = reason.value
        if getattr(value, "signal", None):
            self.status = -value.signal
        else:
            self.status = getattr(value, "exitCode", None) or 0
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        # Whatever the shell left running in its group goes with it.
        self._signal_group(signal.SIGHUP)
        if self.sink is not None:
            self.sink.output_ended(self.status)
        waiters, self._ended_waiters = self._ended_waiters, []
        for d in waiters:
            d.callback(self.status)


class _PipeProtocol(protocol.ProcessProtocol):
    def __init__(self, owner):
        self.owner = owner

    def childDataReceived(self, fd, data):
        self.owner._output(fd, data)

    def processEnded(self, reason):
        self.owner._ended(reason)


class PipeProcess(PtyProcess):
    """One child without a terminal: stdin/stdout/stderr are pipes.

    *sink* gets stdout, *err_sink* stderr; both are told when the child has
    been reaped (after its last byte).  The child runs in a session of its
    own so ``stop`` reaches everything it started.
    """

    def __init__(self, reactor, sink, err_sink):
        super().__init__(reactor, sink)
        self.err_sink = err_sink

    @classmethod
    def spawn(cls, reactor, name, args=(), env=(), cwd=None, sink=None, err_sink=None):
        full_env = build_env(env)
        path = resolve_command(name, full_env)
        self = cls(reactor, sink, err_sink)
        cwd = cwd or home_directory(full_env)
        try:
            if spawn.can_spawn():
                self.transport = spawn.spawn_pipes(reactor, _PipeProtocol(self), path, [name, *args],
                                                   full_env, cwd)
            else:  # util-linux setsid: a session of its own without a pre-exec hook
                self.transport = reactor.spawnProcess(
                    _PipeProtocol(self), spawn.SETSID, [spawn.SETSID, path, *args], env=full_env, path=cwd,
                    childFDs={0: "w", 1: "r", 2: "r"})
        except OSError as e:
            raise SpawnError(f"cannot start {name}: {e}") from None
        self.pid = self.transport.pid
        return self

    def tty_mode(self):
        return 0  # pipes: no terminal modes

    def resize(self, rows, cols, xpixel=0, ypixel=0):
        pass  # no terminal, nothing to resize (as sshd ignores window-change without a pty)

    def close_stdin(self):
        if self.running and self.transport is not None:
            self.transport.closeStdin()

    def _output(self, fd, data):
        sink = self.err_sink if fd == 2 else self.sink
        if sink is not None:
            sink.output_received(data)

    def _ended(self, reason):
        super()._ended(reason)
        if self.err_sink is not None:
            self.err_sink.output_ended(self.status)


_CONTROL_BYTE = re.compile(rb"[\x00-\x1f\x7f]")


def interrupt_written(fd, data):
    """Did writing *data* to the pty master *fd* interrupt the foreground job?
    True when the terminal turns its interrupt character (VINTR, ^C unless
    changed) into SIGINT (ISIG on) and *data* holds it.  A program with ISIG
    off (an editor in raw mode) gets ^C as a key: nothing to flush then.
    Plain typing (no control byte: VINTR is one in practice) costs no ioctl."""
    if _CONTROL_BYTE.search(data) is None:
        return False
    try:
        attrs = termios.tcgetattr(fd)
    except (OSError, termios.error, ValueError):
        return False
    if not attrs[3] & termios.ISIG:
        return False
    vintr = attrs[6][termios.VINTR]
    vintr = vintr if isinstance(vintr, bytes) else bytes([vintr])
    return vintr != b"\0" and vintr in data


@implementer(IOutputSink)
class DirectReader:
    """A bounded output queue for pty.Read, with real back-pressure.

    Above *high_water* queued bytes the pty master is no longer read (so the
    shell blocks on its writes); reading resumes below *low_water*.

    *max_pending* reads may wait at once (1, the reference's one-at-a-time,
    unless the client asked for a read window with skypty's pty.ReadAhead);
    they are answered in the order they came, so output is never reordered.

    A read is answered at once with whatever is queued, unless another was
    answered less than COALESCE seconds ago: then, while the shell is still
    writing, it waits until it can be answered in full (until the output
    pauses for COALESCE, or the oldest queued byte has waited MAX_HOLD).
    A keystroke's echo still goes at once, but a burst (a `cat`) fills each
    read of a window instead of spending one on each 4 KiB the pty hands
    out: the window is counted in reads, so short replies would cut what is
    in flight on a slow path.
    """

    def __init__(self, high_water=1024 * 1024, low_water=256 * 1024, clock=None):
        self.process = None
        self.high_water = high_water
        self.low_water = low_water
        self.max_pending = 1
        self._clock = clock
        self._queue = collections.deque()
        self._queued = 0
        self._pending = collections.deque()  # (Deferred, max_bytes), oldest first
        self._paused = False
        self._ended = False
        self._last_answer = None  # when a read was last answered
        self._last_output = self._oldest = None  # when output last came; when the oldest queued byte did
        self._burst = None  # when the current run of output (pieces less than COALESCE apart) began
        self._flush_call = None

    @property
    def clock(self):
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        return self._clock

    @property
    def queued(self):
        return self._queued

    def output_received(self, data):
        now = self.clock.seconds()
        if self._last_output is None or now - self._last_output >= COALESCE:
            self._burst = now  # output after a pause: a new burst, whose first answer goes at once
        self._last_output = now
        if not self._queue:
            self._oldest = self._last_output
        self._queue.append(data)
        self._queued += len(data)
        self._serve()
        if self._queued > self.high_water and not self._paused and self.process:
            self._paused = True
            self.process.pause_output()

    def output_ended(self, status):
        self._ended = True
        self._serve()
        if not self._queue:
            self.fail_pending(ShellEnded("EOF"))

    def read(self, max_bytes):
        max_bytes = max(1, min(int(max_bytes), MAX_READ))
        if len(self._pending) >= self.max_pending:
            return defer.fail(SkyptyError("a pty.Read is already pending"))
        if not self._queue and self._ended:
            return defer.fail(ShellEnded("EOF"))
        d = defer.Deferred(self._cancelled)
        self._pending.append((d, max_bytes))
        self._serve()
        return d

    def _serve(self):
        """Answer the waiting reads that may be answered now (see the class)."""
        while self._pending and self._queue:
            d, limit = self._pending[0]
            if self._queued < limit and not self._ended:
                hold = self._hold(self.clock.seconds())
                if hold:
                    if self._flush_call is not None and self._flush_call.active():
                        self._flush_call.cancel()
                    self._flush_call = self.clock.callLater(hold, self._serve)
                    return
            self._pending.popleft()
            self._last_answer = self.clock.seconds()
            d.callback(self._take(limit))
            if self._queue:
                self._oldest = self._last_answer  # what is left waits from now

    def _hold(self, now):
        """Seconds a short answer should still wait (0: answer now)."""
        if self._last_answer is None or self._last_answer < self._burst:
            return 0  # the burst's first answer (an echo) goes at once
        quiet_at = self._last_output + COALESCE
        return max(0.0, min(quiet_at, self._oldest + MAX_HOLD) - now)

    def _cancelled(self, d):
        self._pending = collections.deque(p for p in self._pending if p[0] is not d)

    def _take(self, limit):
        parts, size = [], 0
        while self._queue and size < limit:
            chunk = self._queue.popleft()
            room = limit - size
            if len(chunk) > room:
                self._queue.appendleft(chunk[room:])
                chunk = chunk[:room]
            parts.append(chunk)
            size += len(chunk)
        self._queued -= size
        self._maybe_resume()
        return b"".join(parts)

    def _maybe_resume(self):
        if self._paused and self._queued < self.low_water and self.process:
            self._paused = False
            self.process.resume_output()

    def discard(self):
        """Drop the output nobody has read yet (the user interrupted a
        flood: what is queued is no longer wanted); -> bytes dropped."""
        dropped = self._queued
        self._queue.clear()
        self._queued = 0
        self._maybe_resume()
        return dropped

    def fail_pending(self, exc):
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        pending, self._pending = self._pending, collections.deque()
        for d, _ in pending:
            d.errback(exc)

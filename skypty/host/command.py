"""One-shot commands for pty.Exec: no pty, own session, bounded capture.

The child starts in the user's home directory (as ``ssh host cmd`` does) in
a session of its own, so on timeout the whole process group is killed.  It
starts through skypty.host.spawn (posix_spawn with setsid; no copy of the
host, reaped by pidfd); where that is unavailable, through spawnProcess and
util-linux ``setsid`` (spawnProcess has no pre-exec hook, and a fresh child
is never a group leader, so setsid simply execs it in a new session).
"""

import errno
import os
import shutil
import signal
import time

import attr
from twisted.internet import defer, protocol

from skypty.errors import SkyptyError
from skypty.host import spawn
from skypty.host.shell import build_env, home_directory

DEFAULT_TIMEOUT_MS = 30_000
MAX_TIMEOUT_MS = 5 * 60_000
CAPTURE_LIMIT = 16 * 1024 * 1024
STDIN_LIMIT = 1024 * 1024
TIMED_OUT_EXIT_CODE = -1
NOT_FOUND_EXIT_CODE = 127


class ExecError(SkyptyError):
    pass


@attr.s(slots=True)
class ExecResult:
    stdout = attr.ib(default=b"")
    stderr = attr.ib(default=b"")
    stdout_truncated = attr.ib(default=False)
    stderr_truncated = attr.ib(default=False)
    exit_code = attr.ib(default=0)
    timed_out = attr.ib(default=False)
    duration_ms = attr.ib(default=0)


def effective_timeout_ms(timeout_ms):
    if not timeout_ms or timeout_ms <= 0:
        return DEFAULT_TIMEOUT_MS
    return min(int(timeout_ms), MAX_TIMEOUT_MS)


class _Capture:
    __slots__ = ("parts", "size", "truncated")

    def __init__(self):
        self.parts, self.size, self.truncated = [], 0, False

    def add(self, data):
        room = CAPTURE_LIMIT - self.size
        if len(data) > room:
            self.truncated = True
            data = data[:room]  # the rest is drained and dropped: the child never blocks
        if data:
            self.parts.append(data)
            self.size += len(data)

    def value(self):
        return b"".join(self.parts)


class _ExecProtocol(protocol.ProcessProtocol):
    def __init__(self, stdin, done):
        self.stdin = stdin
        self.done = done
        self.out, self.err = _Capture(), _Capture()
        self.status = None

    def connectionMade(self):
        if self.stdin:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def childDataReceived(self, fd, data):
        (self.out if fd == 1 else self.err).add(data)

    def processEnded(self, reason):
        value = reason.value
        sig = getattr(value, "signal", None)
        self.status = 128 + sig if sig else (getattr(value, "exitCode", None) or 0)
        self.done.callback(self)


def _find_program(name, env):
    """*name* as execvp would find it with the child's PATH, or None."""
    if "/" in name:
        return name
    return shutil.which(name, path=env.get("PATH", os.defpath))


def _not_found(name, started, why="No such file or directory"):
    # What the shell and setsid say and do: status 127, the reason on stderr.
    return ExecResult(stderr=f"exec: {name}: {why}\n".encode(), exit_code=NOT_FOUND_EXIT_CODE,
                      duration_ms=int((time.monotonic() - started) * 1000))


def run_exec(reactor, name, args=(), env=(), stdin=b"", timeout_ms=0, cwd=None):
    """Run *name* *args*; Deferred[ExecResult].  Exit code 127 if not found."""
    if not name:
        return defer.fail(ExecError("exec: no command given"))
    if len(stdin or b"") > STDIN_LIMIT:
        return defer.fail(ExecError(f"exec: stdin is larger than {STDIN_LIMIT} bytes"))
    timeout = effective_timeout_ms(timeout_ms) / 1000.0
    done = defer.Deferred()
    proto = _ExecProtocol(stdin or b"", done)
    started = time.monotonic()
    full_env = build_env(env)
    cwd = cwd or home_directory(full_env)
    try:
        if spawn.can_spawn():
            path = _find_program(name, full_env)
            if path is None:
                return defer.succeed(_not_found(name, started))
            transport = spawn.spawn_pipes(reactor, proto, path, [name, *args], full_env, cwd,
                                          stdin=bool(stdin))
        else:
            transport = reactor.spawnProcess(proto, spawn.SETSID, [spawn.SETSID, name, *args], env=full_env, path=cwd,
                                             childFDs={0: "w", 1: "r", 2: "r"})
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR):
            return defer.succeed(_not_found(name, started, e.strerror))
        return defer.fail(ExecError(f"exec: cannot start {name}: {e}"))
    pid = transport.pid
    timed_out = []

    def kill_group():
        for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                target()
            except (ProcessLookupError, PermissionError):
                pass

    def time_out():
        timed_out.append(True)
        kill_group()

    timer = reactor.callLater(timeout, time_out)

    def cancel(_result):
        # The caller went away (connection dropped, key revoked): kill the
        # command now; it is still reaped below, its result just goes nowhere.
        kill_group()

    result = defer.Deferred(canceller=cancel)

    def finished(p):
        if timer.active():
            timer.cancel()
        if not result.called:
            result.callback(ExecResult(
                stdout=p.out.value(), stderr=p.err.value(),
                stdout_truncated=p.out.truncated, stderr_truncated=p.err.truncated,
                exit_code=TIMED_OUT_EXIT_CODE if timed_out else p.status,
                timed_out=bool(timed_out),
                duration_ms=int((time.monotonic() - started) * 1000)))

    done.addCallback(finished)
    return result

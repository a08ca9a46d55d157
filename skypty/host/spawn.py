"""Starting children without copying the host, and reaping only the one that ended.

``reactor.spawnProcess`` forks (Twisted uses posix_spawn only when the child
keeps the parent's directory, and a shell starts in $HOME), and fork costs
grow with the host: page tables for every session it holds.  Its SIGCHLD
handling then calls ``waitpid`` once for every child it knows, on every
SIGCHLD.  With thousands of idle shells open, both made each new command
tens of milliseconds slower.

Here a child starts through glibc's ``posix_spawn`` (a vfork-style clone:
nothing is copied) with the actions a login needs done in the child: a new
session, the pty's slave opened as its controlling terminal, stdio, the
working directory, every other fd closed, ignored signals back to default.
Its exit is watched through a pidfd (Linux >= 5.3) registered with the
reactor, so an exit wakes exactly the watcher of that child and nobody walks
the others.  Where either is missing (another libc, an old kernel) the
caller falls back to ``reactor.spawnProcess``/Twisted's reaping.

The transports speak Twisted's process interface to a ``ProcessProtocol``
(``childDataReceived``, ``processEnded`` with ProcessDone/ProcessTerminated)
so shells and commands do not care which way their child started.
"""

import ctypes
import errno
import fcntl
import os
import shutil
import signal
import sys

from twisted.internet import abstract, error, main
from twisted.python.failure import Failure
from zope.interface import implementer
from twisted.internet.interfaces import IReadDescriptor

from skypty.wire.writenow import write_now

READ_CHUNK = 64 * 1024
# Where posix_spawn is not to be had, children get their own session from setsid(1).
SETSID = shutil.which("setsid") or "/usr/bin/setsid"

# glibc's posix_spawnattr flags (spawn.h)
_POSIX_SPAWN_SETSIGDEF = 0x04
_POSIX_SPAWN_SETSIGMASK = 0x08
_POSIX_SPAWN_SETSID = 0x80

# Opaque glibc structures, allocated with room to spare (x86-64: 80 and 336 bytes).
_ACTIONS_SIZE = 512
_ATTR_SIZE = 1024
_SIGSET_SIZE = 256


class _Libc:
    """The few glibc entry points used here, or None if one is missing."""

    _loaded = None

    @classmethod
    def get(cls):
        if cls._loaded is None:
            cls._loaded = cls._load() or False
        return cls._loaded or None

    @staticmethod
    def _load():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            names = ("posix_spawn", "posix_spawn_file_actions_init", "posix_spawn_file_actions_destroy",
                     "posix_spawn_file_actions_addopen", "posix_spawn_file_actions_adddup2",
                     "posix_spawn_file_actions_addchdir_np", "posix_spawn_file_actions_addclosefrom_np",
                     "posix_spawnattr_init", "posix_spawnattr_destroy", "posix_spawnattr_setflags",
                     "posix_spawnattr_setsigdefault", "posix_spawnattr_setsigmask",
                     "sigemptyset", "sigaddset")
            for name in names:
                getattr(libc, name)
        except (OSError, AttributeError):
            return None
        libc.posix_spawn.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_void_p,
                                     ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        libc.posix_spawn_file_actions_addopen.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p,
                                                          ctypes.c_int, ctypes.c_uint]
        libc.posix_spawn_file_actions_addchdir_np.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        libc.posix_spawnattr_setflags.argtypes = [ctypes.c_void_p, ctypes.c_short]
        return libc


def can_spawn():
    """True when children can start through posix_spawn and be watched by pidfd."""
    return _Libc.get() is not None and hasattr(os, "pidfd_open")


def _c_strings(items):
    """A NULL-terminated char*[] (the bytes objects must outlive the call: the
    caller keeps *items*)."""
    array = (ctypes.c_char_p * (len(items) + 1))()
    array[:-1] = items
    array[-1] = None
    return array


def _ignored_signals():
    # Python ignores SIGPIPE and SIGXFSZ; a child must get the defaults back.
    return [s for s in range(1, signal.NSIG) if signal.getsignal(s) == signal.SIG_IGN]


def _add_libc_internal_signals(sigset):
    """glibc's spawn sets the signals it uses itself (32 and 33, below
    SIGRTMIN) to SIG_IGN in the child unless they are in the defaults set,
    and exec keeps an ignored signal ignored; sigaddset refuses them, so the
    bits are set by hand (a sigset_t is an array of unsigned longs, signal n
    at bit n-1: on a little-endian machine, byte (n-1)//8)."""
    if sys.byteorder != "little":
        return
    for sig in range(32, getattr(signal, "SIGRTMIN", 32)):
        sigset[(sig - 1) // 8] = sigset[(sig - 1) // 8][0] | (1 << ((sig - 1) % 8))


def posix_spawn(path, argv, env, cwd, stdio=None, tty=None):
    """Start *path* with *argv* and *env* in a new session, in *cwd*; -> pid.

    *stdio* maps child fd 0-2 to a parent fd (dup2'd) or to a path (opened:
    ``(path, flags)``); *tty* instead opens that pty slave as fds 0-2, which
    (after setsid, without O_NOCTTY) makes it the controlling terminal.
    Every other fd is closed in the child.  Raises OSError (ENOENT, EACCES...)
    if the program cannot be executed; such a child was already reaped.
    """
    libc = _Libc.get()
    keep = [os.fsencode(path), [os.fsencode(a) for a in argv],
            [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()]]
    c_argv, c_env = _c_strings(keep[1]), _c_strings(keep[2])
    actions = ctypes.create_string_buffer(_ACTIONS_SIZE)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    check = _check_status
    check(libc.posix_spawn_file_actions_init(actions))
    check(libc.posix_spawnattr_init(attr))
    try:
        if tty is not None:
            check(libc.posix_spawn_file_actions_addopen(actions, 0, os.fsencode(tty), os.O_RDWR, 0))
            check(libc.posix_spawn_file_actions_adddup2(actions, 0, 1))
            check(libc.posix_spawn_file_actions_adddup2(actions, 0, 2))
        for child_fd, source in sorted((stdio or {}).items()):
            if isinstance(source, int):
                check(libc.posix_spawn_file_actions_adddup2(actions, source, child_fd))
            else:
                source_path, flags = source
                check(libc.posix_spawn_file_actions_addopen(actions, child_fd, os.fsencode(source_path),
                                                            flags, 0))
        check(libc.posix_spawn_file_actions_addchdir_np(actions, os.fsencode(cwd)))
        check(libc.posix_spawn_file_actions_addclosefrom_np(actions, 3))
        defaults = ctypes.create_string_buffer(_SIGSET_SIZE)
        mask = ctypes.create_string_buffer(_SIGSET_SIZE)
        libc.sigemptyset(defaults)
        libc.sigemptyset(mask)  # the reactor's thread may block signals: the child must not inherit that
        for sig in _ignored_signals():
            libc.sigaddset(defaults, sig)
        _add_libc_internal_signals(defaults)
        check(libc.posix_spawnattr_setsigdefault(attr, defaults))
        check(libc.posix_spawnattr_setsigmask(attr, mask))
        check(libc.posix_spawnattr_setflags(
            attr, _POSIX_SPAWN_SETSID | _POSIX_SPAWN_SETSIGDEF | _POSIX_SPAWN_SETSIGMASK))
        pid = ctypes.c_int(0)
        check(libc.posix_spawn(ctypes.byref(pid), keep[0], actions, attr, c_argv, c_env), path)
        return pid.value
    finally:
        libc.posix_spawn_file_actions_destroy(actions)
        libc.posix_spawnattr_destroy(attr)


def _check_status(code, filename=None):
    if code:
        raise OSError(code, os.strerror(code), *([os.fsdecode(filename)] if filename else []))


def exit_reason(status):
    """A wait status as Twisted reports it: ProcessDone or ProcessTerminated."""
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        return Failure(error.ProcessDone(status) if code == 0 else error.ProcessTerminated(code, None, status))
    return Failure(error.ProcessTerminated(None, os.WTERMSIG(status), status))


@implementer(IReadDescriptor)
class ExitWatcher:
    """Calls *ended(wait status)* once child *pid* has exited and been reaped:
    a pidfd in the reactor becomes readable for that one child only."""

    def __init__(self, reactor, pid, ended):
        self.reactor, self.pid, self._ended = reactor, pid, ended
        self._fd = os.pidfd_open(pid)  # works on a zombie too: nobody else reaps our children
        reactor.addReader(self)

    def fileno(self):
        return self._fd

    def logPrefix(self):
        return "ExitWatcher"

    def doRead(self):
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 255 << 8  # reaped elsewhere: its status is gone
        if pid == 0:
            return None  # not yet (a spurious wake-up)
        self._close()
        self._ended(status)
        return None

    def connectionLost(self, reason):
        self._close()

    def _close(self):
        if self._fd >= 0:
            self.reactor.removeReader(self)
            os.close(self._fd)
            self._fd = -1


class _Stream(abstract.FileDescriptor):
    """One parent end of a child's pty or pipe: drained up to READ_CHUNK
    bytes per wake-up (one delivery), buffered writes, closed on EOF."""

    def __init__(self, reactor, fd, on_data, on_lost):
        super().__init__(reactor)
        os.set_blocking(fd, False)
        self.fd, self._on_data, self._on_lost = fd, on_data, on_lost
        self.connected = 1

    def fileno(self):
        return self.fd

    def doRead(self):
        chunks, total = [], 0
        while total < READ_CHUNK:
            try:
                data = os.read(self.fd, READ_CHUNK - total)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.EIO:  # a pty master once every slave fd is closed
                    data = b""
                else:
                    raise
            if not data:
                if chunks:  # deliver what came first; EOF is seen on the next wake-up
                    break
                return main.CONNECTION_DONE
            chunks.append(data)
            total += len(data)
        if chunks:
            self._on_data(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        return None

    def writeSomeData(self, data):
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except InterruptedError:
            return 0
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.EIO, errno.EBADF):
                return main.CONNECTION_LOST
            raise

    def close_now(self):
        """Close without writing what is still buffered (its reader is gone)."""
        if self.fd >= 0:
            self.connectionLost(Failure(main.CONNECTION_LOST))

    def connectionLost(self, reason):
        if self.fd < 0:
            return
        super().connectionLost(reason)
        os.close(self.fd)
        self.fd = -1
        self._on_lost()


class _Child:
    """What a ProcessProtocol sees of a spawned child; processEnded comes
    once the child is reaped and its output streams have closed (as with
    Twisted's own process transports: nothing it wrote is lost)."""

    _input_fd = None

    def __init__(self, reactor, proto, pid):
        self.reactor, self.proto, self.pid = reactor, proto, pid
        self._streams = {}  # child fd -> _Stream (a pty master is fd 1, both ways)
        self._outputs_open = 0
        self._status = None
        self._ended = False

    def _attach(self, child_fd, fd):
        if child_fd == 0:
            deliver = lambda data: None  # noqa: E731  # stdin is never read
        else:
            deliver = lambda data: self.proto.childDataReceived(child_fd, data)  # noqa: E731
            self._outputs_open += 1
        self._streams[child_fd] = _Stream(self.reactor, fd, deliver, lambda: self._stream_closed(child_fd))

    def _start(self):
        self.proto.makeConnection(self)
        try:
            ExitWatcher(self.reactor, self.pid, self._reaped)
        except OSError:  # out of fds: Twisted's SIGCHLD reaping still finds it
            _TwistedReaper(self.pid, self._reaped)
        for child_fd, stream in list(self._streams.items()):
            if child_fd != 0:
                stream.startReading()
        return self

    def _stream_closed(self, child_fd):
        if self._streams.pop(child_fd, None) is None:
            return
        if child_fd != 0:
            self._outputs_open -= 1
            self.proto.childConnectionLost(child_fd)
        self._maybe_ended()

    def _reaped(self, status):
        self._status = status
        stdin = self._streams.get(0)
        if stdin is not None:  # nobody is left to read it
            stdin.close_now()
        self._maybe_ended()

    def _maybe_ended(self):
        if self._status is None or self._outputs_open > 0 or self._ended:
            return
        self._ended = True
        self.proto.processEnded(exit_reason(self._status))

    # -- IProcessTransport, what shells and commands use --
    def write(self, data):
        stream = self._streams.get(self._input_fd)
        if stream is not None and data:
            write_now(stream, data)  # a keystroke reaches the pty in this reactor turn, not the next

    def writeSequence(self, seq):
        self.write(b"".join(seq))

    def pauseProducing(self):
        for child_fd, stream in self._streams.items():
            if child_fd != 0:
                stream.stopReading()

    def resumeProducing(self):
        for child_fd, stream in self._streams.items():
            if child_fd != 0:
                stream.startReading()

    def signalProcess(self, sig):
        if self._status is not None:
            raise error.ProcessExitedAlready()
        os.kill(self.pid, getattr(signal, f"SIG{sig}") if isinstance(sig, str) else sig)

    def loseConnection(self):
        for stream in list(self._streams.values()):
            stream.loseConnection()


class _TwistedReaper:
    """The fallback: Twisted's reapAllProcesses polls this child on SIGCHLD."""

    def __init__(self, pid, ended):
        from twisted.internet import process

        self.pid, self._ended = pid, ended
        process.registerReapProcessHandler(pid, self)

    def reapProcess(self):
        from twisted.internet import process

        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 255 << 8
        if pid:
            process.unregisterReapProcessHandler(self.pid, self)
            self._ended(status)

    def processEnded(self, status):  # registerReapProcessHandler found it already gone
        self._ended(status)


class PtyChild(_Child):
    _input_fd = 1

    def fileno(self):
        stream = self._streams.get(1)
        return stream.fd if stream is not None else -1

    def closeStdin(self):
        pass  # a pty has no separate stdin: ^D is the shell's EOF


class PipeChild(_Child):
    _input_fd = 0

    def closeStdin(self):
        stream = self._streams.get(0)
        if stream is not None:
            stream.loseConnection()  # after what is buffered has been written


def spawn_pty(reactor, proto, path, argv, env, cwd):
    """*path* on a new pty, as its session leader; -> PtyChild (connected to *proto*)."""
    master, slave = os.openpty()
    try:
        pid = posix_spawn(path, argv, env, cwd, tty=os.ttyname(slave))
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)  # the child opened its own: the master sees EIO once it is gone
    child = PtyChild(reactor, proto, pid)
    child._attach(1, master)
    return child._start()


def _above_stdio(fd):
    """*fd*, moved to 3 or above if it is 0-2 (a dup2 onto itself in the
    child would keep close-on-exec)."""
    if fd > 2:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return moved


def spawn_pipes(reactor, proto, path, argv, env, cwd, stdin=True):
    """*path* with pipes for stdout and stderr, and for stdin unless
    *stdin* is False (then it reads /dev/null); -> PipeChild."""
    parent_ends, child_ends = {}, {}
    try:
        if stdin:
            r, w = (_above_stdio(fd) for fd in os.pipe())
            child_ends[0], parent_ends[0] = r, w
        for child_fd in (1, 2):
            r, w = (_above_stdio(fd) for fd in os.pipe())
            child_ends[child_fd], parent_ends[child_fd] = w, r
        stdio = dict(child_ends)
        if not stdin:
            stdio[0] = (os.devnull, os.O_RDONLY)
        pid = posix_spawn(path, argv, env, cwd, stdio=stdio)
    except BaseException:
        for fd in parent_ends.values():
            os.close(fd)
        raise
    finally:
        for fd in child_ends.values():
            os.close(fd)
    child = PipeChild(reactor, proto, pid)
    for child_fd, fd in parent_ends.items():
        child._attach(child_fd, fd)
    return child._start()

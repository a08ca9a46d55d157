"""``skypty-client cp [-r] [-p] SRC... DST``: files to or from a host over
its ``dmsgpty/sftp`` service, like scp.

One side is local, the other ``NAME:PATH``, ``PK@HOST[:PORT]:PATH`` (direct
Noise TCP; a port needs a second colon, ``PK@HOST:2022:PATH``) or
``PK:PATH`` (through the local host's control socket, over dmsg).

How it moves bytes: both sides are "sides" with the same small Deferred API
(stat, listdir, open for reading, create a temporary file, commit it); the
local side answers at once, the remote one is twisted.conch's SFTP client on
``skypty.fs.link``'s SFTPLink.  ``pump`` keeps up to ``WINDOW`` bytes of
reads and writes in flight per file and several files move at once, so a
copy is not one round trip per chunk.

A partial file never takes the final name: each file is written under a
temporary name in its destination directory (``.NAME.skypty-XXXXXXXX.part``)
and renamed over the final name only once complete.  A failed file, Ctrl-C
or SIGTERM removes the temporary file; only SIGKILL can leave one behind.

This verb runs a Twisted reactor (only this verb imports Twisted).
"""

import os
import posixpath
import re
import stat
import sys
import time
from dataclasses import dataclass

from skypty.errors import SkyptyError

CHUNK = 128 * 1024  # per SFTP read/write; the host takes packets up to 256 KiB
WINDOW = 8 * 1024 * 1024  # bytes in flight per file
FILES_AT_ONCE = 8
STOP_GRACE = 5.0  # after Ctrl-C: how long cleaning up may take before we just exit
PROGRESS_EVERY = 0.2


class CopyError(SkyptyError):
    """One path could not be copied (the rest go on)."""


class Interrupted(SkyptyError):
    pass


class AtDestination(SkyptyError):
    """A failure on the destination side: reported with that side's path."""

    def __init__(self, path, error):
        super().__init__(str(error))
        self.path, self.error = path, error


# -- what the user typed (pure) --------------------------------------------------------------------

@dataclass(frozen=True)
class Location:
    path: str  # remote paths are on the host's SFTP root
    target: object = None  # skypty.client.hosts.Target; None: this machine

    @property
    def remote(self):
        return self.target is not None

    def __str__(self):
        return f"{self.target.label}:{self.path}" if self.remote else self.path


_PK_AT = re.compile(r"([0-9a-fA-F]{66})@(.*)", re.S)
_PORT_PATH = re.compile(r"([0-9]{1,5}):(.*)", re.S)


def parse_location(word, resolve=None):
    """'NAME:PATH', 'PK:PATH', 'PK@HOST[:PORT]:PATH' or a local path -> Location.

    As with scp, a word is local when it has no ':' or a '/' comes before
    its first ':' (``./a:b`` is the local file ``a:b``)."""
    from skypty.client.hosts import DEFAULT_TCP_PORT, HostsError, Target, check_key, is_pk, split_address

    prefix, colon, rest = word.partition(":")
    if not colon or "/" in prefix:
        return Location(word)
    m = _PK_AT.fullmatch(word)
    if m:
        pk, spec = check_key(m.group(1), "host key"), m.group(2)
        if spec.startswith("["):  # PK@[v6]:...
            host, _, after = spec[1:].partition("]")
            if not after.startswith(":"):
                raise HostsError(f"expected PK@[HOST]:PATH, got {word!r}")
            after = after[1:]
        else:
            host, _, after = spec.partition(":")
        port = _PORT_PATH.fullmatch(after)  # PK@HOST:PORT:PATH; else PK@HOST:PATH
        port, path = (int(port.group(1)), port.group(2)) if port else (DEFAULT_TCP_PORT, after)
        host, port = split_address(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return Location(path or ".", Target(pk, host=host, port=port, text=word))
    if is_pk(prefix):
        return Location(rest or ".", Target(check_key(prefix, "host key"), text=prefix))
    if "@" in prefix:
        raise HostsError(f"expected PK@HOST[:PORT]:PATH, got {word!r}")
    resolve = resolve or _resolve_name
    try:
        target = resolve(prefix)
    except HostsError as e:
        raise HostsError(f"{e} (in {word!r}; for a local file with ':' in its name, write ./{word})") from None
    return Location(rest or ".", target)


def _resolve_name(name):
    from skypty.client.hosts import resolve_target

    return resolve_target(name)


def temp_name(final_name, token):
    """Hidden, recognisable, and short enough for NAME_MAX."""
    return f".{final_name[:200]}.skypty-{token}.part"


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0


def progress_line(done, total, elapsed, rate, width=80):
    """`` 42% [#######......]  108.0/256.0 MiB   85.3 MB/s  ETA 0:02``"""
    fraction = done / total if total else 1.0
    eta = (total - done) / rate if rate > 0 else None
    eta_text = "--:--" if eta is None else f"{int(eta) // 60}:{int(eta) % 60:02d}"
    tail = f" {human(done)}/{human(total)}  {rate / 1e6:6.1f} MB/s  ETA {eta_text}"
    bar_width = max(10, width - len(tail) - 8)
    filled = int(bar_width * fraction)
    return f"{int(fraction * 100):3d}% [{'#' * filled}{'.' * (bar_width - filled)}]{tail}"[:width - 1]


class Rate:
    """Bytes per second over the last few seconds (a smooth ETA)."""

    def __init__(self, span=3.0):
        self.span, self.samples = span, []

    def add(self, now, total_done):
        self.samples.append((now, total_done))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.span:
            self.samples.pop(0)

    def value(self):
        if len(self.samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def final_mode(src_mode, preserve, umask):
    return stat.S_IMODE(src_mode) if preserve else stat.S_IMODE(src_mode) & ~umask & 0o777


# -- the two sides (Deferred APIs) -----------------------------------------------------------------

def _attrs_of(st):
    return {"permissions": st.st_mode, "size": st.st_size, "atime": int(st.st_atime), "mtime": int(st.st_mtime)}


class LocalSide:
    join, dirname, basename = staticmethod(os.path.join), staticmethod(os.path.dirname), \
        staticmethod(os.path.basename)
    remote = False

    def __init__(self):
        self.temps = set()  # temporary files still to remove if we stop

    def _d(self, fn, *args):
        from twisted.internet import defer

        try:
            return defer.succeed(fn(*args))
        except OSError as e:
            return defer.fail(e)

    def stat(self, path, follow=True):
        return self._d(lambda: _attrs_of(os.stat(path) if follow else os.lstat(path)))

    def listdir(self, path):
        def entries():
            with os.scandir(path) as it:
                return [(e.name, _attrs_of(e.stat(follow_symlinks=False))) for e in it]
        return self._d(entries)

    def readlink(self, path):
        return self._d(os.readlink, path)

    def mkdir(self, path, mode):
        def make():
            try:
                os.mkdir(path, mode)
            except FileExistsError:
                if not os.path.isdir(path):
                    raise
        return self._d(make)

    def set_attrs(self, path, mode=None, times=None):
        def apply():
            if mode is not None:
                os.chmod(path, mode)
            if times is not None:
                os.utime(path, times)
        return self._d(apply)

    def symlink(self, target, final, token):
        def make():
            tmp = self.join(self.dirname(final) or ".", temp_name(self.basename(final), token))
            os.symlink(target, tmp)
            try:
                os.replace(tmp, final)
            except OSError:
                os.unlink(tmp)
                raise
        return self._d(make)

    def open_read(self, path):
        return self._d(LocalReader, path)

    def create_temp(self, final, token):
        return self._d(LocalWriter, self, final, token)


class LocalReader:
    def __init__(self, path):
        self.fd = os.open(path, os.O_RDONLY)

    def read(self, offset, length):
        from twisted.internet import defer

        try:
            return defer.succeed(os.pread(self.fd, length, offset))
        except OSError as e:
            return defer.fail(e)

    def close(self):
        from twisted.internet import defer

        os.close(self.fd)
        return defer.succeed(None)


class LocalWriter:
    def __init__(self, side, final, token):
        self.side, self.final = side, final
        self.tmp = os.path.join(os.path.dirname(final) or ".", temp_name(os.path.basename(final), token))
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        side.temps.add(self.tmp)

    def write(self, offset, data):
        from twisted.internet import defer

        try:
            view = memoryview(data)
            while view:
                n = os.pwrite(self.fd, view, offset)
                view, offset = view[n:], offset + n
            return defer.succeed(None)
        except OSError as e:
            return defer.fail(e)

    def commit(self, mode, times):
        from twisted.internet import defer

        try:
            os.fchmod(self.fd, mode)
            if times is not None:
                os.utime(self.fd, times)
            os.close(self.fd)
            self.fd = None
            os.replace(self.tmp, self.final)
            self.side.temps.discard(self.tmp)
            return defer.succeed(None)
        except OSError as e:
            return defer.fail(e)

    def discard(self):
        from twisted.internet import defer

        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass
        self.side.temps.discard(self.tmp)
        return defer.succeed(None)


def _b(path):
    return path.encode("utf-8", "surrogateescape")


class RemoteSide:
    join, dirname, basename = staticmethod(posixpath.join), staticmethod(posixpath.dirname), \
        staticmethod(posixpath.basename)
    remote = True

    def __init__(self, fs):
        self.fs, self.link = fs, fs.link
        self.temps = set()

    def stat(self, path, follow=True):
        return self.link.call(lambda c: c.getAttrs(_b(path), 1 if follow else 0))

    def listdir(self, path):
        d = self.fs.listdir(_b(path))
        return d.addCallback(lambda entries: [(n.decode("utf-8", "surrogateescape"), a) for n, a in entries])

    def readlink(self, path):
        return self.fs.readlink(_b(path)).addCallback(lambda t: t.decode("utf-8", "surrogateescape"))

    def mkdir(self, path, mode):
        from twisted.internet import defer

        @defer.inlineCallbacks
        def make():
            try:
                yield self.fs.mkdir(_b(path), mode)
            except Exception:
                attrs = yield self.stat(path)  # an existing directory is fine (cp -r merges)
                if not stat.S_ISDIR(attrs.get("permissions", 0)):
                    raise
        return make()

    def set_attrs(self, path, mode=None, times=None):
        attrs = {}
        if mode is not None:
            attrs["permissions"] = mode
        if times is not None:
            attrs["atime"], attrs["mtime"] = int(times[0]), int(times[1])
        return self.fs.setstat(_b(path), attrs)

    def symlink(self, target, final, token):
        tmp = self.join(self.dirname(final) or ".", temp_name(self.basename(final), token))
        d = self.fs.symlink(_b(target), _b(tmp))
        d.addCallback(lambda _: self.fs.rename(_b(tmp), _b(final)))
        return d

    def open_read(self, path):
        from twisted.conch.ssh import filetransfer as fx

        d = self.fs.open(_b(path), fx.FXF_READ)
        return d.addCallback(lambda opened: RemoteReader(self.link, opened[0]))

    def create_temp(self, final, token):
        from twisted.conch.ssh import filetransfer as fx

        tmp = self.join(self.dirname(final) or ".", temp_name(self.basename(final), token))
        flags = fx.FXF_WRITE | fx.FXF_CREAT | fx.FXF_EXCL
        d = self.fs.open(_b(tmp), flags, {"permissions": 0o600})

        def opened(result):
            self.temps.add(tmp)
            return RemoteWriter(self, final, tmp, result[0])
        return d.addCallback(opened)


class RemoteReader:
    def __init__(self, link, handle):
        self.link, self.handle = link, handle

    def read(self, offset, length):
        def at_eof(failure):
            failure.trap(EOFError)
            return b""
        return self.link.call(lambda c: self.handle.readChunk(offset, length)).addErrback(at_eof)

    def close(self):
        return self.handle.close().addErrback(lambda _: None) if self.link.connected else _succeed()


class RemoteWriter:
    def __init__(self, side, final, tmp, handle):
        self.side, self.final, self.tmp, self.handle = side, final, tmp, handle
        self.closed = False

    def write(self, offset, data):
        return self.side.link.call(lambda c: self.handle.writeChunk(offset, data))

    def _close(self):
        if self.closed:
            return _succeed()
        self.closed = True
        return self.side.link.call(lambda c: self.handle.close())

    def commit(self, mode, times):
        fs = self.side.fs
        d = self._close()
        d.addCallback(lambda _: self.side.set_attrs(self.tmp, mode, times))
        d.addCallback(lambda _: fs.rename(_b(self.tmp), _b(self.final)))
        d.addCallback(lambda _: self.side.temps.discard(self.tmp))
        return d

    def discard(self):
        d = self._close()
        d.addBoth(lambda _: self.side.fs.remove(_b(self.tmp)))
        d.addBoth(lambda _: self.side.temps.discard(self.tmp))
        return d


def _succeed(value=None):
    from twisted.internet import defer

    return defer.succeed(value)


# -- moving one file's bytes ------------------------------------------------------------------------

def pump(reader, writer, size, on_bytes, should_stop, window=WINDOW, chunk=CHUNK):
    """Copy *size* bytes from *reader* to *writer* with up to *window*
    bytes of reads and writes in flight; short reads ask for the rest."""
    from twisted.internet import defer
    from twisted.python.failure import Failure

    done = defer.Deferred()
    state = {"next": 0, "in_flight": 0, "outstanding": 0, "error": None, "filling": False, "again": False}

    def move(offset, length):
        d = reader.read(offset, length)

        def got(data):
            if not data:
                raise CopyError("the file got shorter while it was being copied")
            w = writer.write(offset, data)
            w.addCallback(lambda _: on_bytes(len(data)))
            if len(data) < length:
                w.addCallback(lambda _: move(offset + len(data), length - len(data)))
            return w
        return d.addCallback(got)

    def finished(result, length):
        state["outstanding"] -= 1
        state["in_flight"] -= length
        if isinstance(result, Failure):
            if state["error"] is None:
                state["error"] = result
        fill()

    def fill():
        if state["filling"]:  # a synchronous answer came back inside the loop below
            state["again"] = True
            return
        state["filling"] = True
        try:
            while True:
                state["again"] = False
                while (state["error"] is None and not should_stop() and state["next"] < size
                       and state["in_flight"] < window):
                    offset = state["next"]
                    length = min(chunk, size - offset)
                    state["next"] += length
                    state["in_flight"] += length
                    state["outstanding"] += 1
                    move(offset, length).addBoth(finished, length)
                if not state["again"]:
                    break
        finally:
            state["filling"] = False
        if state["outstanding"] == 0 and not done.called:
            if state["error"] is not None:
                done.errback(state["error"])
            elif should_stop():
                done.errback(Interrupted("interrupted"))
            else:
                done.callback(None)

    fill()
    return done


# -- the copy ------------------------------------------------------------------------------------------

@dataclass
class Job:
    kind: str  # "dir", "file" or "link"
    src: str
    dst: str
    attrs: dict


def describe(failure_or_error):
    from twisted.conch.ssh import filetransfer as fx

    e = getattr(failure_or_error, "value", failure_or_error)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if isinstance(e, fx.SFTPError):
        from skypty.fs.errors import errno_for

        return os.strerror(errno_for(e)) if str(e.message) in ("", "Failure") else str(e.message)
    if isinstance(e, EOFError):
        return "unexpected end of file"
    return str(e) or e.__class__.__name__


def is_link_failure(failure):
    from skypty.fs.errors import LinkDown

    return isinstance(getattr(failure, "value", failure), LinkDown)


class Copier:
    def __init__(self, src, dst, preserve, recursive, progress, err=sys.stderr):
        self.src, self.dst = src, dst  # sides
        self.preserve, self.recursive = preserve, recursive
        self.progress = progress
        self.err = err
        self.umask = _umask()
        self.failures = 0
        self.stopping = False
        self.fatal = None

    def warn(self, path, why):
        self.failures += 1
        self.progress.clear()
        self.err.write(f"skypty-client: cp: {path}: {why}\n")
        self.err.flush()

    # planning

    def plan(self, sources, dst_path):
        from twisted.internet import defer

        @defer.inlineCallbacks
        def run():
            try:
                dst_attrs = yield self.dst.stat(dst_path)
            except Exception:
                dst_attrs = None
            into_dir = dst_attrs is not None and stat.S_ISDIR(dst_attrs.get("permissions", 0))
            if len(sources) > 1 and not into_dir:
                raise CopyError(f"{dst_path}: not a directory (copying {len(sources)} sources into it)")
            jobs = []
            for path in sources:
                try:
                    attrs = yield self.src.stat(path)
                except Exception as e:
                    if is_link_failure(e):
                        raise
                    self.warn(path, describe(e))
                    continue
                name = self.src.basename(path.rstrip("/")) or path
                target = self.dst.join(dst_path, name) if into_dir else dst_path
                if stat.S_ISDIR(attrs["permissions"]):
                    if not self.recursive:
                        self.warn(path, "is a directory (not copied; use -r)")
                        continue
                    yield self.walk(path, target, attrs, jobs)
                elif stat.S_ISREG(attrs["permissions"]):
                    jobs.append(Job("file", path, target, attrs))
                else:
                    self.warn(path, "not a regular file or directory (not copied)")
            return jobs
        return run()

    def walk(self, src, dst, attrs, jobs):
        from twisted.internet import defer

        @defer.inlineCallbacks
        def run():
            jobs.append(Job("dir", src, dst, attrs))
            try:
                entries = yield self.src.listdir(src)
            except Exception as e:
                if is_link_failure(e):
                    raise
                self.warn(src, describe(e))
                return
            for name, a in sorted(entries, key=lambda entry: entry[0]):
                mode = a.get("permissions", 0)
                s, d = self.src.join(src, name), self.dst.join(dst, name)
                if stat.S_ISDIR(mode):
                    yield self.walk(s, d, a, jobs)
                elif stat.S_ISREG(mode):
                    jobs.append(Job("file", s, d, a))
                elif stat.S_ISLNK(mode):
                    jobs.append(Job("link", s, d, a))
                else:
                    self.warn(s, "not a regular file, directory or symlink (not copied)")
        return run()

    # doing

    def run(self, jobs):
        from twisted.internet import defer

        @defer.inlineCallbacks
        def go():
            self.progress.start(sum(j.attrs.get("size", 0) for j in jobs if j.kind == "file"))
            made = []
            for job in (j for j in jobs if j.kind == "dir"):
                if self.stopping:
                    break
                try:  # owner rwx while we fill it; its own mode comes at the end
                    yield self.dst.mkdir(job.dst, 0o700)
                    made.append(job)
                except Exception as e:
                    if is_link_failure(e):
                        raise
                    self.warn(job.dst, describe(e))
            semaphore = defer.DeferredSemaphore(FILES_AT_ONCE)
            work = [semaphore.run(self.one, job) for job in jobs if job.kind != "dir"]
            yield defer.DeferredList(work)
            if self.fatal is not None:
                raise self.fatal
            for job in reversed(made):  # deepest first: a read-only parent must come last
                if self.stopping:
                    break
                times = (job.attrs["atime"], job.attrs["mtime"]) if self.preserve else None
                try:
                    yield self.dst.set_attrs(job.dst, final_mode(job.attrs["permissions"], self.preserve,
                                                                 self.umask), times)
                except Exception as e:
                    self.warn(job.dst, describe(e))
        return go()

    def one(self, job):
        from twisted.internet import defer

        @defer.inlineCallbacks
        def go():
            if self.stopping or self.fatal is not None:
                return
            token = os.urandom(4).hex()
            try:
                if job.kind == "link":
                    target = yield self.src.readlink(job.src)
                    yield self.dst.symlink(target, job.dst, token)
                else:
                    yield self.copy_file(job, token)
            except Interrupted:
                pass
            except AtDestination as e:
                if is_link_failure(e.error):
                    self.fatal = self.fatal or e.error
                    self.stopping = True
                else:
                    self.warn(e.path, describe(e.error))
            except Exception as e:
                if is_link_failure(e):
                    self.fatal = self.fatal or e
                    self.stopping = True
                else:
                    self.warn(job.src, describe(e))
        return go()

    def copy_file(self, job, token):
        from twisted.internet import defer

        @defer.inlineCallbacks
        def go():
            reader = yield self.src.open_read(job.src)
            try:
                try:
                    writer = yield self.dst.create_temp(job.dst, token)
                except Exception as e:
                    raise AtDestination(job.dst, e) from None
                try:
                    yield pump(reader, writer, job.attrs["size"], self.progress.add, lambda: self.stopping)
                    times = (job.attrs["atime"], job.attrs["mtime"]) if self.preserve else None
                    try:
                        yield writer.commit(final_mode(job.attrs["permissions"], self.preserve, self.umask), times)
                    except Exception as e:
                        raise AtDestination(job.dst, e) from None
                except BaseException:
                    yield writer.discard()
                    raise
            finally:
                yield reader.close()
        return go()


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# -- progress ----------------------------------------------------------------------------------------

class Progress:
    """A bar on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, stream, enabled, clock=time.monotonic):
        self.stream, self.enabled, self.clock = stream, enabled, clock
        self.total = self.done = 0
        self.started = None
        self.rate = Rate()
        self.loop = None
        self.shown = False

    def start(self, total):
        self.total, self.started = total, self.clock()
        if self.enabled:
            from twisted.internet import task

            self.loop = task.LoopingCall(self.draw)
            self.loop.start(PROGRESS_EVERY)

    def add(self, n):
        self.done += n

    def draw(self):
        now = self.clock()
        self.rate.add(now, self.done)
        width = _terminal_width(self.stream)
        self.stream.write("\r" + progress_line(self.done, self.total, now - self.started,
                                               self.rate.value(), width))
        self.stream.flush()
        self.shown = True

    def clear(self):
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.shown = False

    def finish(self, ok):
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        if not self.enabled or self.started is None:
            return
        self.clear()
        elapsed = max(self.clock() - self.started, 1e-6)
        verb = "copied" if ok else "stopped after"
        self.stream.write(f"{verb} {human(self.done)} in {elapsed:.1f}s ({self.done / elapsed / 1e6:.1f} MB/s)\n")
        self.stream.flush()


def _terminal_width(stream):
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 80


# -- connecting ----------------------------------------------------------------------------------------

def _connector(reactor, target, args, timeout, sk):
    from skypty.keys import PublicKey

    pk = PublicKey.from_hex(target.pk)
    if target.direct:
        from skypty.fs.link import noise_tcp_connector

        return noise_tcp_connector(reactor, target.host, target.port, sk, pk, timeout)
    from skypty.client.reach import no_key_flags
    from skypty.client.identity import control_socket

    no_key_flags(args, "cp through the local host (PK:PATH, or a name without an address)")
    network, address = control_socket(args)
    from skypty.client.errors import proxy_refusal
    from skypty.client.transport import foreign_control_socket
    from skypty.fs.link import control_socket_connector

    explain = lambda reason, text: proxy_refusal(reason, text, pk.hex(), args.port)  # noqa: E731
    return control_socket_connector(reactor, network, address, pk, args.port, timeout, explain,
                                    vet=foreign_control_socket, scheme=target.scheme)


# -- the verb -------------------------------------------------------------------------------------------

def split_paths(words, resolve=None):
    """-> (sources, destination) as Locations, checked for one remote side."""
    from skypty.client.errors import usage_error

    if len(words) < 2:
        raise usage_error("cp needs a source and a destination: skypty-client cp [-r] [-p] SRC... DST")
    locations = [parse_location(w, resolve) for w in words]
    sources, dst = locations[:-1], locations[-1]
    remote_sources = {s.target for s in sources if s.remote}
    if len(remote_sources) > 1 or (remote_sources and any(not s.remote for s in sources)):
        raise usage_error("cp: all sources must be on the same side (all local, or all on one host)")
    if dst.remote and remote_sources:
        raise usage_error("cp copies between this machine and one host; copying between hosts "
                          "(or within one) is not supported: copy through a local file")
    if not dst.remote and not remote_sources:
        raise usage_error("cp: one side must be a host: NAME:PATH, PK:PATH or PK@HOST[:PORT]:PATH")
    return sources, dst


def cmd_cp(args, parser):
    from skypty.client.reach import guarded

    return guarded(_cmd_cp)(args, parser)


def _cmd_cp(args, parser):
    import signal

    from skypty.durations import DurationError, parse_duration

    sources, dst = split_paths(args.paths)
    try:
        timeout = parse_duration(args.timeout, "--timeout")
    except DurationError as e:
        raise SkyptyError(str(e)) from None
    remote = dst if dst.remote else sources[0]

    from twisted.internet import defer, reactor

    from skypty.fs.link import RemoteFS, SFTPLink

    sk = None
    if remote.target.direct:
        from skypty.client.identity import resolve_secret_key

        sk = resolve_secret_key(args)
    link = SFTPLink(reactor, _connector(reactor, remote.target, args, timeout, sk), timeout=timeout,
                    retry_after=0)
    remote_side, local_side = RemoteSide(RemoteFS(link)), LocalSide()
    src, dst_side = (remote_side, local_side) if not dst.remote else (local_side, remote_side)
    progress = Progress(sys.stderr, sys.stderr.isatty() and not args.quiet)
    copier = Copier(src, dst_side, args.preserve, args.recursive, progress)
    outcome = {"code": 0, "signal": None}

    def stop(signum):
        if outcome["signal"] is not None:  # a second Ctrl-C: leave now
            _remove_local(local_side)
            os._exit(128 + signum)
        outcome["signal"] = signum
        copier.stopping = True
        reactor.callLater(STOP_GRACE, hard_stop)

    def hard_stop():
        if reactor.running:
            _remove_local(local_side)
            reactor.stop()

    @defer.inlineCallbacks
    def main():
        try:
            yield link.session()  # a host we cannot reach is one clear line, before any work
            jobs = yield copier.plan([s.path for s in sources], dst.path)
            yield copier.run(jobs)
            progress.finish(copier.failures == 0 and outcome["signal"] is None)
            outcome["code"] = 1 if copier.failures else 0
        except Exception as e:
            progress.finish(False)
            outcome["code"] = 1
            sys.stderr.write(f"skypty-client: cp: {_top_error(e, remote, sk)}\n")
        finally:
            if remote_side.temps:  # interrupted: take our temporary files away
                yield defer.DeferredList([remote_side.fs.remove(_b(t)) for t in list(remote_side.temps)])
            _remove_local(local_side)
            link.close()
            if reactor.running:
                reactor.stop()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda n, _frame: reactor.callFromThread(stop, n))
    reactor.callWhenRunning(main)
    reactor.run(installSignalHandlers=False)
    if outcome["signal"] is not None:
        return 128 + outcome["signal"]
    return outcome["code"]


def _remove_local(side):
    for tmp in list(side.temps):
        try:
            os.unlink(tmp)
        except OSError:
            pass
        side.temps.discard(tmp)


def _top_error(e, remote, sk):
    from skypty.fs.errors import LinkDown

    if isinstance(e, LinkDown):
        if sk is not None and str(e).startswith("not authorized: the host closed"):
            from skypty.client.errors import not_whitelisted

            # over Noise TCP a host hangs up on a key it does not know: say which key
            return not_whitelisted(remote.target.pk, sk.public_key.hex())
        return f"{remote.target.label}: {e}"
    return describe(e)

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

What a host lists is not trusted.  A name must be one plain entry of its
directory (``check_name``); locally every directory below DST is held open
and entries are made relative to it with O_NOFOLLOW, so nothing is written
through a symlink, whoever made it.  ``-r`` walks depth first and copies
as it goes, holding one page of each directory on the path (``Held``):
memory does not grow with the tree, and ``--max-depth``/``--max-entries``
end endless trees and directories.

This verb runs a Twisted reactor (only this verb imports Twisted).
"""

import errno
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
    """Hidden, recognisable, and short enough for NAME_MAX (255 bytes, not characters)."""
    head = final_name.encode("utf-8", "surrogateescape")[:200].decode("utf-8", "surrogateescape")
    return f".{head}.skypty-{token}.part"


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


# -- names from a listing (pure) ---------------------------------------------------------------------

class UnsafeName(CopyError):
    """A listed name that is not one plain entry of its directory."""

    def __init__(self, name):
        super().__init__(f"refused the name '{name}' from the host's listing: not a plain file name "
                         "(it could reach outside the destination)")
        self.name = name


SELF_AND_PARENT = (".", "..")  # listed by most servers, never copied


def check_name(name):
    """*name* (one entry of a listing) -> itself if it names exactly one
    entry inside its directory; else UnsafeName.  ``.`` and ``..`` are
    refused here too: the walk skips them before asking."""
    if not name or "/" in name or "\0" in name or name in SELF_AND_PARENT:
        raise UnsafeName(name)
    return name


# -- the two sides (Deferred APIs) -----------------------------------------------------------------
#
# A source side lists and reads (stat, opendir -> pages, readlink, open_read).
# A destination side works in directories it holds: ``top`` opens one the user
# named, ``mkdir`` makes (or reuses) one entry of a held directory and holds it;
# files and links are made by name inside a held directory.  Locally a held
# directory is an open fd and every name is resolved against it with
# O_NOFOLLOW: nothing is ever written through a symlink below the destination.

LISTING_PAGE = 256  # local entries per page


def _attrs_of(st):
    return {"permissions": st.st_mode, "size": st.st_size, "atime": int(st.st_atime), "mtime": int(st.st_mtime)}


class LocalDir:
    def __init__(self, fd, path):
        self.fd, self.path = fd, path


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class LocalSide:
    join, dirname, basename = staticmethod(os.path.join), staticmethod(os.path.dirname), \
        staticmethod(os.path.basename)
    remote = False

    def __init__(self):
        self.temps = set()  # (LocalDir, name) of temporary files still to remove if we stop

    def _d(self, fn, *args):
        from twisted.internet import defer

        try:
            return defer.succeed(fn(*args))
        except OSError as e:
            return defer.fail(e)

    # as a source

    def stat(self, path, follow=True):
        return self._d(lambda: _attrs_of(os.stat(path) if follow else os.lstat(path)))

    def opendir(self, path):
        return self._d(LocalLister, path)

    def readlink(self, path):
        return self._d(os.readlink, path)

    def open_read(self, path):
        return self._d(LocalReader, path)

    # as the destination

    def show(self, parent, name):
        return os.path.join(parent.path, name)

    def top(self, path):
        """A directory the user named (followed like any path they type)."""
        return self._d(lambda: LocalDir(os.open(path, _DIR_FLAGS), path))

    def mkdir(self, parent, name, mode):
        def make():
            try:
                os.mkdir(name, mode, dir_fd=parent.fd)
            except FileExistsError:  # cp -r merges into a directory already there
                st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise OSError(errno.ELOOP, "a symbolic link is in the way (not followed)") from None
                if not stat.S_ISDIR(st.st_mode):
                    raise
            # O_NOFOLLOW: a link swapped in since is refused, not entered
            return LocalDir(os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent.fd), self.show(parent, name))
        return self._d(make)

    def finish_dir(self, held, mode, times):
        def apply():
            os.fchmod(held.fd, mode)
            if times is not None:
                os.utime(held.fd, times)
        return self._d(apply)

    def release(self, held):
        if held.fd is not None:
            os.close(held.fd)
            held.fd = None

    def symlink(self, parent, name, target, token):
        def make():
            tmp = temp_name(name, token)
            os.symlink(target, tmp, dir_fd=parent.fd)
            try:
                os.replace(tmp, name, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)
            except OSError:
                os.unlink(tmp, dir_fd=parent.fd)
                raise
        return self._d(make)

    def create_temp(self, parent, name, token):
        return self._d(LocalWriter, self, parent, name, token)


class LocalLister:
    def __init__(self, path):
        self.it = os.scandir(path)

    def page(self):
        """-> Deferred[list of (name, attrs)], None at the end."""
        from twisted.internet import defer

        out = []
        try:
            for entry in self.it:
                try:
                    out.append((entry.name, _attrs_of(entry.stat(follow_symlinks=False))))
                except FileNotFoundError:  # gone since it was listed
                    continue
                if len(out) >= LISTING_PAGE:
                    break
        except OSError as e:
            return defer.fail(e)
        return defer.succeed(out or None)

    def close(self):
        self.it.close()


class LocalReader:
    def __init__(self, path):
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

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
    """A temporary file in a held directory, renamed over its name in that
    same directory: created O_EXCL|O_NOFOLLOW, so never through a link."""

    def __init__(self, side, parent, name, token):
        self.side, self.parent, self.name = side, parent, name
        self.tmp = temp_name(name, token)
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=parent.fd)
        side.temps.add((parent, self.tmp))

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
            os.replace(self.tmp, self.name, src_dir_fd=self.parent.fd, dst_dir_fd=self.parent.fd)
            self.side.temps.discard((self.parent, self.tmp))
            return defer.succeed(None)
        except OSError as e:
            return defer.fail(e)

    def discard(self):
        from twisted.internet import defer

        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            os.unlink(self.tmp, dir_fd=self.parent.fd)
        except FileNotFoundError:
            pass
        self.side.temps.discard((self.parent, self.tmp))
        return defer.succeed(None)


def _b(path):
    return path.encode("utf-8", "surrogateescape")


class RemoteDir:
    def __init__(self, path):
        self.path = path


class RemoteSide:
    join, dirname, basename = staticmethod(posixpath.join), staticmethod(posixpath.dirname), \
        staticmethod(posixpath.basename)
    remote = True

    def __init__(self, fs):
        self.fs, self.link = fs, fs.link
        self.temps = set()

    # as a source

    def stat(self, path, follow=True):
        return self.link.call(lambda c: c.getAttrs(_b(path), 1 if follow else 0))

    def opendir(self, path):
        d = self.link.call(lambda c: c.openDirectory(_b(path)))
        return d.addCallback(lambda directory: RemoteLister(self.link, directory))

    def readlink(self, path):
        return self.fs.readlink(_b(path)).addCallback(lambda t: t.decode("utf-8", "surrogateescape"))

    def open_read(self, path):
        from twisted.conch.ssh import filetransfer as fx

        d = self.fs.open(_b(path), fx.FXF_READ)
        return d.addCallback(lambda opened: RemoteReader(self.link, opened[0]))

    # as the destination (names come from this machine's listings)

    def show(self, parent, name):
        return posixpath.join(parent.path, name)

    def top(self, path):
        return _succeed(RemoteDir(path))

    def mkdir(self, parent, name, mode):
        from twisted.internet import defer

        path = self.show(parent, name)

        @defer.inlineCallbacks
        def make():
            try:
                yield self.fs.mkdir(_b(path), mode)
            except Exception:
                attrs = yield self.stat(path)  # an existing directory is fine (cp -r merges)
                if not stat.S_ISDIR(attrs.get("permissions", 0)):
                    raise
            return RemoteDir(path)
        return make()

    def finish_dir(self, held, mode, times):
        attrs = {"permissions": mode}
        if times is not None:
            attrs["atime"], attrs["mtime"] = int(times[0]), int(times[1])
        return self.fs.setstat(_b(held.path), attrs)

    def release(self, held):
        pass

    def symlink(self, parent, name, target, token):
        final = self.show(parent, name)
        tmp = posixpath.join(parent.path, temp_name(name, token))
        d = self.fs.symlink(_b(target), _b(tmp))
        d.addCallback(lambda _: self.fs.rename(_b(tmp), _b(final)))
        return d

    def create_temp(self, parent, name, token):
        from twisted.conch.ssh import filetransfer as fx

        final = self.show(parent, name)
        tmp = posixpath.join(parent.path, temp_name(name, token))
        flags = fx.FXF_WRITE | fx.FXF_CREAT | fx.FXF_EXCL
        d = self.fs.open(_b(tmp), flags, {"permissions": 0o600})

        def opened(result):
            self.temps.add(tmp)
            return RemoteWriter(self, final, tmp, result[0])
        return d.addCallback(opened)


class RemoteLister:
    """One READDIR at a time: a page (<= skypty.fs.replies.MAX_NAMES entries)
    is all that is held of a remote directory."""

    def __init__(self, link, directory):
        self.link, self.directory = link, directory
        self.ended = False

    def page(self):
        if self.ended:
            return _succeed(None)

        def got(found):  # skypty.fs.replies.Names: decoded as the walk takes them
            return _Page(((name.decode("utf-8", "surrogateescape"), attrs) for name, _, attrs in found),
                         len(found))

        def at_end(failure):
            failure.trap(EOFError)
            self.ended = True
            return None
        return self.link.call(lambda c: self.directory.read()).addCallbacks(got, at_end)

    def close(self):
        if self.link.connected:
            self.directory.close().addErrback(lambda _: None)


class _Page:
    """Entries of one listing page, taken one at a time."""

    def __init__(self, entries, count):
        self.entries, self.count = iter(entries), count

    def __len__(self):
        return self.count

    def __iter__(self):
        return self.entries


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
        attrs = {"permissions": mode}
        if times is not None:
            attrs["atime"], attrs["mtime"] = int(times[0]), int(times[1])
        d.addCallback(lambda _: fs.setstat(_b(self.tmp), attrs))
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

MAX_DEPTH = 64  # directory levels below a source (--max-depth)
MAX_ENTRIES = 100_000  # entries of one directory (--max-entries)


@dataclass(eq=False)
class Job:
    kind: str  # "file" or "link"
    src: str
    parent: "Held"  # the destination directory it goes into
    name: str
    attrs: dict


@dataclass(eq=False)
class Held:
    """A destination directory the copy holds, and the source directory
    being walked into it.  It gets its own mode (and times) once its walk
    is over and nothing under it is still being copied; then it is let go.
    Only directories on the walk's path (and the few with a file still in
    flight) are held: memory does not grow with the tree."""

    ref: object  # the side's handle (an fd locally)
    display: str
    parent: "Held" = None
    attrs: dict = None  # None: the user's directory, whose mode is not ours to set
    src: str = None
    depth: int = 0
    lister: object = None
    page: object = None  # an iterator over the page being walked
    seen: int = 0  # entries listed so far (--max-entries)
    dots: int = 0
    pending: int = 0  # files, links and subdirectories under way inside
    walked: bool = False
    settled: bool = False


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
    """Walks each source depth first and copies as it goes: one page of
    each directory on the path is held, never a whole listing."""

    def __init__(self, src, dst, preserve, recursive, progress, err=sys.stderr, max_depth=MAX_DEPTH,
                 max_entries=MAX_ENTRIES):
        self.src, self.dst = src, dst  # sides
        self.preserve, self.recursive = preserve, recursive
        self.progress = progress
        self.err = err
        self.max_depth, self.max_entries = max_depth, max_entries
        self.umask = _umask()
        self.failures = 0
        self.stopping = False
        self.fatal = None
        self.running = 0  # files, links and directory modes under way
        self._idle = []
        self._slots = None

    def say(self, path, why):
        from skypty.client.textsafe import safe

        self.progress.clear()
        self.err.write(f"skypty-client: cp: {safe(path)}: {safe(why)}\n")
        self.err.flush()

    def warn(self, path, why):
        """A failure: said now, exit 1 at the end."""
        self.failures += 1
        self.say(path, why)

    def note(self, path, why):
        """Said, but not a failure (a special file skipped)."""
        self.say(path, why)

    def copy(self, sources, dst_path):
        """-> Deferred fired when every source is copied (or failed)."""
        from twisted.internet import defer

        self._slots = defer.DeferredSemaphore(FILES_AT_ONCE)

        @defer.inlineCallbacks
        def run():
            try:
                dst_attrs = yield self.dst.stat(dst_path)
            except Exception:
                dst_attrs = None
            into_dir = dst_attrs is not None and stat.S_ISDIR(dst_attrs.get("permissions", 0))
            if len(sources) > 1 and not into_dir:
                raise CopyError(f"{dst_path}: not a directory (copying {len(sources)} sources into it)")
            self.progress.start(0)
            for path in sources:
                if self.stopping or self.fatal is not None:
                    break
                try:
                    yield self.copy_source(path, dst_path, into_dir)
                except Exception as e:
                    if not is_link_failure(e):
                        raise
                    self.fatal, self.stopping = self.fatal or e, True  # a lost link stops the copy
            yield self.idle()
            if self.fatal is not None:
                raise self.fatal
        return run()

    def copy_source(self, path, dst_path, into_dir):
        from twisted.internet import defer

        @defer.inlineCallbacks
        def run():
            try:
                attrs = yield self.src.stat(path)
            except Exception as e:
                if is_link_failure(e):
                    raise
                self.warn(path, describe(e))
                return
            mode = attrs.get("permissions", 0)
            if stat.S_ISDIR(mode) and not self.recursive:
                self.warn(path, "is a directory (not copied; use -r)")
                return
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                self.warn(path, "not a regular file or directory (not copied)")
                return
            if into_dir:
                parent_path, name = dst_path, self.src.basename(path.rstrip("/"))
            else:
                trimmed = dst_path.rstrip("/") or dst_path
                parent_path, name = self.dst.dirname(trimmed) or ".", self.dst.basename(trimmed)
            merge = name in ("",) + SELF_AND_PARENT  # `cp -r host:/ DIR`, `host:.`: into DIR itself
            if merge and not stat.S_ISDIR(mode):
                self.warn(dst_path, "Is a directory")
                return
            try:
                top = yield self.dst.top(dst_path if merge else parent_path)
            except Exception as e:
                if is_link_failure(e):
                    raise
                self.warn(dst_path if merge else self.dst.join(parent_path, name), describe(e))
                return
            held = Held(top, dst_path if merge else parent_path)
            try:
                if stat.S_ISREG(mode):
                    yield self.start(Job("file", path, held, name, attrs))
                elif merge:
                    held.src = path
                    yield self.walk(held)
                else:
                    root = yield self.enter(held, name, path, attrs, 0)
                    if root is not None:
                        yield self.walk(root)
            finally:
                held.walked = True
                self.settle(held)
        return run()

    # walking

    def enter(self, parent, name, src, attrs, depth):
        """Make (or reuse) the destination directory *name* in *parent* and
        open *src* for listing -> Deferred[Held], or None (said why)."""
        from twisted.internet import defer

        @defer.inlineCallbacks
        def run():
            try:  # owner rwx while we fill it; its own mode comes when it is done
                ref = yield self.dst.mkdir(parent.ref, name, 0o700)
            except Exception as e:
                if is_link_failure(e):
                    raise
                self.warn(self.dst.show(parent.ref, name), describe(e))
                return None
            held = Held(ref, self.dst.show(parent.ref, name), parent, attrs, src, depth)
            parent.pending += 1
            return held
        return run()

    def walk(self, root):
        """Depth first, iteratively: the stack is the path from *root*."""
        from twisted.internet import defer

        @defer.inlineCallbacks
        def run():
            stack = [root]
            try:
                while stack and not self.stopping and self.fatal is None:
                    here = stack[-1]
                    if here.lister is None:
                        try:
                            here.lister = yield self.src.opendir(here.src)
                        except Exception as e:
                            if is_link_failure(e):
                                raise
                            self.warn(here.src, describe(e))
                            self._leave(stack)
                            continue
                    entry = next(here.page, None) if here.page is not None else None
                    if entry is None:
                        try:
                            page = yield here.lister.page()
                        except Exception as e:
                            if is_link_failure(e):
                                raise
                            self.warn(here.src, describe(e))
                            page = None
                        if page is None:
                            self._leave(stack)
                            continue
                        here.page = iter(page)
                        here.seen += 0 if len(page) else 1  # endless empty pages end too
                        continue
                    name, attrs = entry
                    here.dots += name in SELF_AND_PARENT
                    here.seen += 0 if name in SELF_AND_PARENT and here.dots <= 2 else 1  # those two are free
                    if here.seen > self.max_entries:
                        self.warn(here.src, f"more than {self.max_entries} entries: the rest is not copied "
                                            "(--max-entries N allows more)")
                        self._leave(stack)
                        continue
                    if name in SELF_AND_PARENT:
                        continue
                    try:
                        check_name(name)
                    except UnsafeName as e:
                        self.warn(here.src, str(e))
                        continue
                    path = self.src.join(here.src, name)
                    mode = attrs.get("permissions", 0)
                    if stat.S_ISDIR(mode):
                        if here.depth >= self.max_depth:
                            self.warn(path, f"more than {self.max_depth} levels below the source: not copied "
                                            "(--max-depth N allows more)")
                            continue
                        child = yield self.enter(here, name, path, attrs, here.depth + 1)
                        if child is not None:
                            stack.append(child)
                    elif stat.S_ISREG(mode):
                        yield self.start(Job("file", path, here, name, attrs))
                    elif stat.S_ISLNK(mode):
                        yield self.start(Job("link", path, here, name, attrs))
                    else:
                        self.note(path, "not a regular file, directory or symlink (skipped)")
            finally:
                while stack:
                    self._leave(stack)
        return run()

    def _leave(self, stack):
        here = stack.pop()
        if here.lister is not None:
            here.lister.close()
        here.lister, here.page = None, None
        here.walked = True
        self.settle(here)

    def settle(self, held):
        """Once *held* is walked and nothing inside is under way: its mode,
        then let it go, then maybe its parent."""
        if held.settled or not held.walked or held.pending:
            return
        held.settled = True
        if held.attrs is None or self.stopping or self.fatal is not None:
            self._let_go(held)
            return
        times = (held.attrs["atime"], held.attrs["mtime"]) if self.preserve and "mtime" in held.attrs else None
        mode = final_mode(held.attrs.get("permissions", 0o700), self.preserve, self.umask)
        self._busy()
        d = self.dst.finish_dir(held.ref, mode, times)

        def failed(failure):
            if is_link_failure(failure):
                self.fatal = self.fatal or failure.value
            else:
                self.warn(held.display, describe(failure))
        d.addErrback(failed)
        d.addBoth(lambda _: (self._let_go(held), self._done()))

    def _let_go(self, held):
        self.dst.release(held.ref)
        if held.parent is not None:
            held.parent.pending -= 1
            self.settle(held.parent)

    # doing

    def start(self, job):
        """Wait for a free slot, then set *job* going -> Deferred (the wait)."""
        d = self._slots.acquire()

        def go(_):
            job.parent.pending += 1
            if job.kind == "file":
                self.progress.expect(job.attrs.get("size", 0))
            self._busy()
            done = self.one(job)

            def finished(_):
                self._slots.release()
                job.parent.pending -= 1
                self.settle(job.parent)
                self._done()
            done.addBoth(finished)
        return d.addCallback(go)

    def _busy(self):
        self.running += 1

    def _done(self):
        self.running -= 1
        if self.running == 0:
            waiters, self._idle = self._idle, []
            for w in waiters:
                w.callback(None)

    def idle(self):
        from twisted.internet import defer

        if self.running == 0:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle.append(d)
        return d

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
                    try:
                        yield self.dst.symlink(job.parent.ref, job.name, target, token)
                    except Exception as e:
                        raise AtDestination(self.dst.show(job.parent.ref, job.name), e) from None
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
                    writer = yield self.dst.create_temp(job.parent.ref, job.name, token)
                except Exception as e:
                    raise AtDestination(self.dst.show(job.parent.ref, job.name), e) from None
                try:
                    yield pump(reader, writer, job.attrs.get("size", 0), self.progress.add, lambda: self.stopping)
                    times = (job.attrs["atime"], job.attrs["mtime"]) if self.preserve and "mtime" in job.attrs \
                        else None
                    try:
                        yield writer.commit(final_mode(job.attrs.get("permissions", 0o600), self.preserve,
                                                       self.umask), times)
                    except Exception as e:
                        raise AtDestination(self.dst.show(job.parent.ref, job.name), e) from None
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
            self.loop.start(PROGRESS_EVERY, now=False)  # once the first file's size is known

    def expect(self, n):
        """A recursive copy learns its total as it walks."""
        self.total += n

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
    copier = Copier(src, dst_side, args.preserve, args.recursive, progress,
                    max_depth=getattr(args, "max_depth", MAX_DEPTH),
                    max_entries=getattr(args, "max_entries", MAX_ENTRIES))
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
            yield copier.copy([s.path for s in sources], dst.path)
            progress.finish(copier.failures == 0 and outcome["signal"] is None)
            outcome["code"] = 1 if copier.failures else 0
        except Exception as e:
            progress.finish(False)
            outcome["code"] = 1
            from skypty.client.textsafe import safe

            sys.stderr.write(f"skypty-client: cp: {safe(_top_error(e, remote, sk))}\n")
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
    for held, tmp in list(side.temps):
        try:
            if held.fd is not None:
                os.unlink(tmp, dir_fd=held.fd)
        except OSError:
            pass
        side.temps.discard((held, tmp))


def _top_error(e, remote, sk):
    from skypty.fs.errors import LinkDown

    if isinstance(e, LinkDown):
        if sk is not None and str(e).startswith("not authorized: the host closed"):
            from skypty.client.errors import not_whitelisted

            # over Noise TCP a host hangs up on a key it does not know: say which key
            return not_whitelisted(remote.target.pk, sk.public_key.hex())
        return f"{remote.target.label}: {e}"
    return describe(e)

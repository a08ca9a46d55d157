"""llfuse's callbacks, answered from the host over SFTP.

llfuse calls these in its worker threads holding ``llfuse.lock``; each
remote call releases the lock and blocks on the reactor thread
(``blockingCallFromThread``), so several kernel requests are in flight at
once.  The inode table and the caches are only touched with the lock held.

Caching follows sshfs (20 s by default): attributes (``attr_ttl``, also the
kernel's attribute timeout), names (``entry_ttl``, the kernel's dentry
timeout) and directory listings (``dir_ttl``).  What this mount changes
itself it forgets or replaces at once; changes made on the host by others
show after the TTL.  Every change that returns attributes sends its LSTAT
right behind it (one round trip, not two), and a setattr on an open file
goes through its handle (FSETSTAT: ordered after that file's writes, so
nothing has to be waited for first).
"""

import errno
import itertools
import os
import stat
import time
import zlib

import llfuse
from twisted.conch.ssh import filetransfer as fx
from twisted.internet.threads import blockingCallFromThread

from skypty.fs.errors import errno_for
from skypty.fs.files import RemoteFile
from skypty.fs.inodes import InodeTable, StaleInode


SWEEP_EVERY = 10_000  # cache entries between sweeps of the expired ones


def sftp_open_flags(flags):
    access = flags & os.O_ACCMODE
    pflags = {os.O_RDONLY: fx.FXF_READ, os.O_WRONLY: fx.FXF_WRITE}.get(access, fx.FXF_READ | fx.FXF_WRITE)
    if flags & os.O_APPEND:
        pflags |= fx.FXF_APPEND
    if flags & os.O_CREAT:
        pflags |= fx.FXF_CREAT
    if flags & os.O_TRUNC:
        pflags |= fx.FXF_TRUNC
    if flags & os.O_EXCL:
        pflags |= fx.FXF_EXCL
    return pflags


def _writes(flags):
    return flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_CREAT | os.O_APPEND)


class SFTPOperations(llfuse.Operations):
    def __init__(self, reactor, fs, root_path=b"/", read_only=False, attr_ttl=20.0, entry_ttl=20.0,
                 dir_ttl=20.0):
        super().__init__()
        self.reactor, self.fs = reactor, fs
        self.read_only = read_only
        self.attr_ttl, self.entry_ttl, self.dir_ttl = attr_ttl, entry_ttl, dir_ttl
        self.inodes = InodeTable(root_path)
        self._attrs = {}  # path -> (sftp attrs, expiry): lookups after a readdir cost nothing
        self._sweep_at = SWEEP_EVERY
        self._changed = {}  # path -> how often it changed here (answers older than a change are not kept)
        self._changes = 0  # all of them
        self._listings = {}  # directory path -> ({name: attrs}, expiry): complete, so also says what is not there
        self._files = {}  # fh -> RemoteFile
        self._open_by_inode = {}  # inode -> {RemoteFile}
        self._dirs = {}  # fh -> [(name, attrs)]
        self._fh = itertools.count(1)

    # -- plumbing ---------------------------------------------------------------------

    def _remote(self, fn, *args):
        """``fn(*args) -> Deferred`` in the reactor; its result, or FUSEError."""
        with llfuse.lock_released:
            try:
                return blockingCallFromThread(self.reactor, fn, *args)
            except llfuse.FUSEError:
                raise
            except EOFError:
                raise llfuse.FUSEError(errno.EIO) from None
            except Exception as e:
                raise llfuse.FUSEError(errno_for(e)) from None

    def _path(self, inode):
        try:
            return self.inodes.path(inode)
        except StaleInode:
            raise llfuse.FUSEError(errno.ENOENT) from None

    def _child(self, parent_inode, name):
        try:
            return self.inodes.child(parent_inode, name)
        except StaleInode:
            raise llfuse.FUSEError(errno.ENOENT) from None

    def _refuse_writes(self):
        if self.read_only:
            raise llfuse.FUSEError(errno.EROFS)

    def _cache(self, path, attrs, since=None):
        """Keep *attrs* of *path* for attr_ttl, unless *path* changed after
        *since* (what ``_changes(path)`` said before the request was sent):
        then the answer may predate the change."""
        if self.attr_ttl > 0 and (since is None or self._changed.get(path, 0) == since):
            now = time.monotonic()
            self._attrs[path] = (attrs, now + self.attr_ttl)
            if len(self._attrs) > self._sweep_at:
                self._sweep(now)
        return attrs

    def _sweep(self, now):
        """Drop what has expired, so the caches follow what is in use, not
        everything ever seen."""
        for cache in (self._attrs, self._listings):
            for path in [p for p, (_, expiry) in cache.items() if expiry <= now]:
                del cache[path]
        self._changed.clear()  # an answer in flight now is simply not kept        self._sweep_at = max(SWEEP_EVERY, 2 * len(self._attrs))

    def _uncache(self, path):
        """*path*'s size or times changed: ask the host next time.  The entry
        stays, expired: a setattr of mtime alone may still take atime from it
        (SFTP v3 sets both; writes do not change atime)."""
        cached = self._attrs.get(path)
        if cached is not None:
            self._attrs[path] = (cached[0], 0.0)
        self._changed[path] = self._changed.get(path, 0) + 1
        self._changes += 1

    def _changes_of(self, path):
        return self._changed.get(path, 0)

    def _last_atime(self, path):
        cached = self._attrs.get(path)
        return cached[0].get("atime") if cached is not None else None

    def _uncache_tree(self, path):
        prefix = path + b"/"
        for cache in (self._attrs, self._listings):
            for p in [p for p in cache if p == path or p.startswith(prefix)]:
                del cache[p]

    def _cached_listing(self, path):
        cached = self._listings.get(path)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        return None

    def _listing(self, path):
        """{name: attrs} of directory *path*: cached while fresh, else from the host."""
        entries = self._cached_listing(path)
        if entries is None:
            changes = self._changes
            entries = dict(self._remote(self.fs.listdir, path))
            if changes == self._changes:  # nothing written meanwhile: the attributes are current
                for name, attrs in entries.items():
                    self._cache(os.path.join(path, name), attrs)
            if self.dir_ttl > 0:
                self._listings[path] = (entries, time.monotonic() + self.dir_ttl)
        return entries

    def _listed(self, path, attrs, made=False):
        """*path* appeared through this mount: a cached listing of its
        directory gains it (and a directory *made* here is known empty)."""
        parent, name = os.path.split(path)
        self._uncache(parent)  # its mtime (and a directory's link count) changed
        entries = self._cached_listing(parent)
        if entries is not None:
            entries[name] = attrs
        if made and stat.S_ISDIR(attrs.get("permissions", 0)) and self.dir_ttl > 0:
            self._listings[path] = ({}, time.monotonic() + self.dir_ttl)

    def _unlisted(self, path):
        parent, name = os.path.split(path)
        self._uncache(parent)
        entries = self._cached_listing(parent)
        if entries is not None:
            entries.pop(name, None)

    def _lstat(self, path):
        cached = self._attrs.get(path)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        since = self._changes_of(path)
        return self._cache(path, self._remote(self.fs.lstat, path), since)

    def _entry(self, inode, attrs):
        entry = llfuse.EntryAttributes()
        entry.st_ino = inode
        entry.generation = 0
        entry.entry_timeout = self.entry_ttl
        entry.attr_timeout = self.attr_ttl
        mode = attrs.get("permissions", stat.S_IFREG | 0o644)
        if not stat.S_IFMT(mode):
            mode |= stat.S_IFREG
        entry.st_mode = mode
        entry.st_nlink = 2 if stat.S_ISDIR(mode) else 1
        entry.st_uid = attrs.get("uid", os.getuid())
        entry.st_gid = attrs.get("gid", os.getgid())
        entry.st_rdev = 0
        entry.st_size = attrs.get("size", 0)
        entry.st_blksize = 65536
        entry.st_blocks = (entry.st_size + 511) // 512
        entry.st_atime_ns = int(attrs.get("atime", 0)) * 10**9
        entry.st_mtime_ns = int(attrs.get("mtime", 0)) * 10**9
        entry.st_ctime_ns = entry.st_mtime_ns
        return entry

    def _looked_up(self, path):
        attrs = self._lstat(path)
        return self._entry(self.inodes.remember(path), attrs)

    def _made(self, path, request, *args):
        """``request(*args)`` creates *path*; its LSTAT travels with it.
        -> (request's result, the entry for *path*)."""
        self._uncache(path)
        since = self._changes_of(path)
        result, attrs = self._remote(self.fs.then_lstat, lambda: request(*args), path)
        self._listed(path, attrs, made=True)
        return result, self._entry(self.inodes.remember(path), self._cache(path, attrs, since))

    def _order_after_writes(self, inode):
        """A request by path must see this inode's queued writes.  The host
        answers in order, so writes already sent are enough; only writes
        held back (a handle being reopened after a reconnect) are waited for."""
        for f in list(self._open_by_inode.get(inode, ())):
            if f.pending_writes and not f.handle_current:
                self._remote(f.landed)

    # -- names ------------------------------------------------------------------------

    def lookup(self, parent_inode, name, ctx):
        path = self._child(parent_inode, name)
        if name not in (b".", b".."):
            # A fresh listing is complete: a name not in it is not there (an
            # untar looks up every name before creating it).
            entries = self._cached_listing(os.path.dirname(path))
            if entries is not None and name not in entries:
                raise llfuse.FUSEError(errno.ENOENT)
        return self._looked_up(path)

    def forget(self, inode_list):
        for inode, count in inode_list:
            self.inodes.forget(inode, count)

    def getattr(self, inode, ctx):
        path = self._path(inode)
        if self._open_by_inode.get(inode):
            # Writes expire the cached attributes once they are sent; an
            # LSTAT sent after them sees them.
            self._order_after_writes(inode)
        return self._entry(inode, self._lstat(path))

    def setattr(self, inode, attr, fields, fh, ctx):
        self._refuse_writes()
        path = self._path(inode)
        changes = {}
        if fields.update_size:
            changes["size"] = attr.st_size
        if fields.update_mode:
            changes["permissions"] = stat.S_IMODE(attr.st_mode)
        if fields.update_uid or fields.update_gid:
            # SFTP v3 sets owner and group together.
            current = {} if fields.update_uid and fields.update_gid else self._lstat(path)
            changes["uid"] = attr.st_uid if fields.update_uid else current.get("uid", 0)
            changes["gid"] = attr.st_gid if fields.update_gid else current.get("gid", 0)
        if fields.update_atime or fields.update_mtime:
            # ... and both times, in whole seconds.  tar sets mtime alone.
            if fields.update_atime:
                changes["atime"] = attr.st_atime_ns // 10**9
            else:
                atime = self._last_atime(path)
                changes["atime"] = atime if atime is not None else self._lstat(path).get("atime", 0)
            if fields.update_mtime:
                changes["mtime"] = attr.st_mtime_ns // 10**9
            else:
                self._order_after_writes(inode)
                changes["mtime"] = self._lstat(path).get("mtime", 0)
        if not changes:
            return self.getattr(inode, ctx)
        remote = self._files.get(fh) if fh is not None else None
        if remote is not None and remote.handle_current:
            send = lambda: self.fs.fsetstat(remote, changes)  # noqa: E731
        else:
            self._order_after_writes(inode)
            send = lambda: self.fs.setstat(path, changes)  # noqa: E731
        self._uncache(path)
        since = self._changes_of(path)
        _, attrs = self._remote(self.fs.then_lstat, send, path)
        if "size" in changes:
            for f in self._open_by_inode.get(inode, ()):
                f.truncated()
        return self._entry(inode, self._cache(path, attrs, since))

    def readlink(self, inode, ctx):
        return self._remote(self.fs.readlink, self._path(inode))

    def mkdir(self, parent_inode, name, mode, ctx):
        self._refuse_writes()
        path = self._child(parent_inode, name)
        return self._made(path, self.fs.mkdir, path, stat.S_IMODE(mode))[1]

    def rmdir(self, parent_inode, name, ctx):
        self._refuse_writes()
        path = self._child(parent_inode, name)
        self._remote(self.fs.rmdir, path)
        self._uncache_tree(path)
        self._unlisted(path)
        self.inodes.removed(path)

    def unlink(self, parent_inode, name, ctx):
        self._refuse_writes()
        path = self._child(parent_inode, name)
        self._remote(self.fs.remove, path)
        self._uncache(path)
        self._unlisted(path)
        self.inodes.removed(path)

    def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, ctx):
        self._refuse_writes()
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        self._remote(self.fs.rename, old, new)
        moved = self._attrs.get(old)
        self._uncache_tree(old)
        self._uncache_tree(new)
        self._unlisted(old)
        self._unlisted(new)
        if moved is not None:
            self._listed(new, moved[0])
        else:
            self._listings.pop(os.path.dirname(new), None)  # what it is is unknown: list again
        self.inodes.renamed(old, new)
        for files in self._open_by_inode.values():
            for f in files:
                if f.path == old or f.path.startswith(old + b"/"):
                    f.path = new + f.path[len(old):]

    def symlink(self, parent_inode, name, target, ctx):
        self._refuse_writes()
        path = self._child(parent_inode, name)
        return self._made(path, self.fs.symlink, target, path)[1]

    def link(self, inode, new_parent_inode, new_name, ctx):
        self._refuse_writes()
        path = self._child(new_parent_inode, new_name)
        old = self._path(inode)
        entry = self._made(path, self.fs.hardlink, old, path)[1]
        self._uncache(old)  # its link count changed
        return entry

    def statfs(self, ctx):
        st = llfuse.StatvfsData()
        found = self._remote(self.fs.statvfs, self.inodes.root_path)
        if found is None:  # the server cannot tell: say "plenty", as sshfs does
            found = dict(f_bsize=4096, f_frsize=4096, f_blocks=2**30, f_bfree=2**30, f_bavail=2**30,
                         f_files=2**20, f_ffree=2**20, f_favail=2**20, f_namemax=255)
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                     "f_favail", "f_namemax"):
            setattr(st, name, found[name])
        return st

    def access(self, inode, mode, ctx):
        if mode & os.W_OK and self.read_only:
            return False
        return True  # the host's own permissions decide on every request

    # -- directories ------------------------------------------------------------------

    def opendir(self, inode, ctx):
        path = self._path(inode)
        entries = self._listing(path)
        fh = next(self._fh)
        # A snapshot (offsets stay valid), led by "." and ".." as every
        # directory's listing is (ls -a, find, shells' globbing expect them).
        dot = {"permissions": stat.S_IFDIR}
        self._dirs[fh] = (path, [(b".", dot), (b"..", dot)] + list(entries.items()))
        return fh

    def _dirent_inode(self, path, name):
        if name == b"." or (name == b".." and path == self.inodes.root_path):
            child = path  # the mount's root is its own parent: nothing above it is ours
        elif name == b"..":
            child = os.path.dirname(path)
        else:
            child = os.path.join(path, name)
        # readdir hands out no references: a known inode, or a stable
        # stand-in number (the kernel only uses it for d_ino).
        return self.inodes.known(child) or (zlib.crc32(child) | 1 << 40)

    def readdir(self, fh, off):
        path, entries = self._dirs[fh]
        for index in range(off, len(entries)):
            name, attrs = entries[index]
            inode = self._dirent_inode(path, name)
            # Only the number and the type reach the kernel (a dirent): the
            # rest of _entry's work would be thrown away, per name, per walk.
            entry = llfuse.EntryAttributes()
            entry.st_ino = inode
            mode = attrs.get("permissions", stat.S_IFREG)
            entry.st_mode = mode if stat.S_IFMT(mode) else mode | stat.S_IFREG
            yield name, entry, index + 1

    def releasedir(self, fh):
        self._dirs.pop(fh, None)

    # -- files ------------------------------------------------------------------------

    def _opened(self, inode, path, handle, generation, pflags):
        remote = RemoteFile(self.fs, path, pflags, handle, generation)
        remote.inode = inode
        fh = next(self._fh)
        self._files[fh] = remote
        self._open_by_inode.setdefault(inode, set()).add(remote)
        return fh

    def open(self, inode, flags, ctx):
        if _writes(flags):
            self._refuse_writes()
        path = self._path(inode)
        pflags = sftp_open_flags(flags)
        handle, generation = self._remote(self.fs.open, path, pflags)
        if flags & os.O_TRUNC:
            self._uncache(path)
        return self._opened(inode, path, handle, generation, pflags)

    def create(self, parent_inode, name, mode, flags, ctx):
        self._refuse_writes()
        path = self._child(parent_inode, name)
        pflags = sftp_open_flags(flags | os.O_CREAT)
        (handle, generation), entry = self._made(path, self.fs.open, path, pflags,
                                                 {"permissions": stat.S_IMODE(mode)})
        return self._opened(entry.st_ino, path, handle, generation, pflags), entry

    def read(self, fh, off, size):
        remote = self._files[fh]
        data = remote.read_ready(off, size)
        if data is not None:
            # Already read ahead: no need to wait for the reactor, which only
            # slides the window on (and asks for more) in its own time, and
            # only when it is running low.
            if not remote.window_full(off, size):
                self.reactor.callFromThread(lambda: remote.read(off, size).addErrback(lambda _: None))
            return data
        return self._remote(remote.read, off, size)

    def write(self, fh, off, buf):
        remote = self._files[fh]
        self._uncache(remote.path)
        try:
            if remote.write_from_thread(self.reactor, off, buf):
                return len(buf)  # write-behind: this thread need not wait for the reactor
            return self._remote(remote.write, off, buf)
        finally:
            # Again now that the WRITE is on its way: an answer to a stat
            # sent before it (by another thread) must not be kept.
            self._uncache(remote.path)

    def flush(self, fh):
        remote = self._files.get(fh)
        if remote is not None:
            self._remote(remote.flush)

    def fsync(self, fh, datasync):
        self.flush(fh)

    def release(self, fh):
        remote = self._files.pop(fh, None)
        if remote is None:
            return
        opened = self._open_by_inode.get(remote.inode)
        if opened is not None:
            opened.discard(remote)
            if not opened:
                del self._open_by_inode[remote.inode]
        self._remote(remote.close)

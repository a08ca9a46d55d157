"""Inode numbers for remote paths, as FUSE's lookup/forget protocol wants.

SFTP names files by path; the kernel names them by inode number and tells
us how many references it holds (lookup counts, released by ``forget``).
Pure bookkeeping, no I/O, so that renames of whole trees can be tested
without a mount.
"""

import posixpath

ROOT_INODE = 1


class StaleInode(KeyError):
    """The kernel named an inode whose path is gone (unlinked, or forgotten)."""


class InodeTable:
    def __init__(self, root_path=b"/"):
        self.root_path = root_path
        self._path = {ROOT_INODE: root_path}  # inode -> path (None once unlinked)
        self._inode = {root_path: ROOT_INODE}
        self._lookups = {ROOT_INODE: 1}  # the root is never forgotten
        self._next = ROOT_INODE + 1

    def __len__(self):
        return len(self._path)

    def path(self, inode):
        path = self._path.get(inode)
        if path is None:
            raise StaleInode(inode)
        return path

    def child(self, parent_inode, name):
        parent = self.path(parent_inode)
        if name == b".":
            return parent
        if name == b"..":
            return parent if parent == self.root_path else posixpath.dirname(parent)
        return posixpath.join(parent, name)

    def known(self, path):
        return self._inode.get(path)

    def remember(self, path):
        """A lookup answered with *path*: its inode, with one more reference."""
        inode = self._inode.get(path)
        if inode is None:
            inode = self._next
            self._next += 1
            self._inode[path] = inode
            self._path[inode] = path
            self._lookups[inode] = 0
        self._lookups[inode] += 1
        return inode

    def forget(self, inode, count):
        if inode == ROOT_INODE or inode not in self._lookups:
            return
        self._lookups[inode] -= count
        if self._lookups[inode] <= 0:
            del self._lookups[inode]
            path = self._path.pop(inode)
            if path is not None and self._inode.get(path) == inode:
                del self._inode[path]

    def removed(self, path):
        """*path* was unlinked: its inode lives on (open files) but has no name."""
        inode = self._inode.pop(path, None)
        if inode is not None:
            self._path[inode] = None

    def renamed(self, old, new):
        """*old* (and everything under it) now lives at *new*; whatever was at
        *new* before was replaced."""
        self.removed(new)
        prefix = old + b"/"
        moved = [(p, i) for p, i in self._inode.items() if p == old or p.startswith(prefix)]
        for path, inode in moved:
            del self._inode[path]
        for path, inode in moved:
            target = new + path[len(old):]
            self._inode.pop(target, None)
            self._inode[target] = inode
            self._path[inode] = target

"""The ``dmsgpty/sftp`` service: plain SFTP v3 on the stream, served by
twisted.conch's FileTransferServer, as the host's own user.

``pty.sftp.root`` confines every path to a directory (symlinks resolved, so
``..`` and links cannot leave it); ``pty.sftp.read_only`` refuses every
change with FX_PERMISSION_DENIED.
"""

import os

from twisted.conch.ssh import filetransfer
from twisted.conch.ssh.filetransfer import FX_PERMISSION_DENIED, SFTPError
from twisted.conch.unix import SFTPServerForUnixConchUser
from twisted.python.filepath import FilePath

WRITE_FLAGS = (filetransfer.FXF_WRITE | filetransfer.FXF_APPEND | filetransfer.FXF_CREAT
               | filetransfer.FXF_TRUNC)


class HostUser:
    """What conch's unix SFTP server needs of a user: the host's own."""

    def __init__(self, root):
        self.root = root

    def getHomeDir(self):
        return FilePath(self.root)

    def getUserGroupId(self):
        return os.getuid(), os.getgid()

    def _runAsUser(self, f, *args, **kw):
        # The host already runs as the user it serves: no euid switching.
        calls = f if isinstance(f, (list, tuple)) else [(f, args, kw)]
        result = None
        for call in calls:
            func, a, k = call[0], (call[1] if len(call) > 1 else ()), (call[2] if len(call) > 2 else {})
            result = func(*a, **k)
        return result


class ConfinedSFTPServer(SFTPServerForUnixConchUser):
    def __init__(self, root="/", read_only=False):
        self.root = os.path.realpath(root)
        self.read_only = read_only
        super().__init__(HostUser(self.root))

    def _absPath(self, path):
        if isinstance(path, bytes):
            path = path.decode("utf-8", "surrogateescape")
        joined = os.path.realpath(os.path.join(self.root, path.lstrip("/") if self.root != "/" else path))
        if self.root != "/" and joined != self.root and not joined.startswith(self.root + os.sep):
            raise SFTPError(FX_PERMISSION_DENIED, "outside the shared directory")
        return joined

    def realPath(self, path):
        absolute = self._absPath(path)
        if self.root == "/":
            return absolute
        rel = os.path.relpath(absolute, self.root)
        return "/" if rel == "." else "/" + rel

    def _refuse_if_read_only(self):
        if self.read_only:
            raise SFTPError(FX_PERMISSION_DENIED, "this host shares its files read-only")

    def openFile(self, filename, flags, attrs):
        if flags & WRITE_FLAGS:
            self._refuse_if_read_only()
        return super().openFile(filename, flags, attrs)

    def removeFile(self, filename):
        self._refuse_if_read_only()
        return super().removeFile(filename)

    def renameFile(self, oldpath, newpath):
        self._refuse_if_read_only()
        return super().renameFile(oldpath, newpath)

    def makeDirectory(self, path, attrs):
        self._refuse_if_read_only()
        return super().makeDirectory(path, attrs)

    def removeDirectory(self, path):
        self._refuse_if_read_only()
        return super().removeDirectory(path)

    def setAttrs(self, path, attrs):
        self._refuse_if_read_only()
        return super().setAttrs(path, attrs)

    def makeLink(self, linkPath, targetPath):
        # OpenSSH's client and sftp-server put SYMLINK's paths in the reverse of
        # the draft's order; the reference serves OpenSSH semantics, so do we.
        self._refuse_if_read_only()
        return super().makeLink(targetPath, linkPath)


def make_sftp_protocol(avatar, sftp_config):
    server = ConfinedSFTPServer(sftp_config.root, sftp_config.read_only)
    return filetransfer.FileTransferServer(avatar=server)




"""The ``dmsgpty/sftp`` service: plain SFTP v3 on the stream, served by
twisted.conch's FileTransferServer, as the host's own user.

``pty.sftp.root`` confines every path to a directory (symlinks resolved, so
``..`` and links cannot leave it); ``pty.sftp.read_only`` refuses every
change with FX_PERMISSION_DENIED.
"""

import errno
import os
import struct

from twisted.conch.ssh import filetransfer
from twisted.internet import defer
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.filetransfer import FX_FAILURE, FX_PERMISSION_DENIED, SFTPError
from twisted.conch.unix import SFTPServerForUnixConchUser, UnixSFTPFile
from twisted.python.filepath import FilePath

from skypty.wire.sftp import PacketGather, QuietLogger

# OpenSSH's limits: a packet is at most 256 KiB, a read answers at most
# 255 KiB (shorter reads are legal SFTP, so clients loop).
MAX_PACKET = 256 * 1024
MAX_READ = MAX_PACKET - 1024

# Extensions we serve, with OpenSSH's names and versions; OpenSSH's sshfs and
# our FUSE client use them for POSIX rename, df and hard links.
EXTENSIONS = {
    b"posix-rename@openssh.com": b"1",
    b"statvfs@openssh.com": b"2",
    b"hardlink@openssh.com": b"1",
}
STATUS_EXTENSIONS = (b"posix-rename@openssh.com", b"hardlink@openssh.com")

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

    def _joined(self, path):
        if isinstance(path, bytes):
            path = path.decode("utf-8", "surrogateescape")
        return os.path.normpath(os.path.join(self.root, path.lstrip("/")))

    def _confined(self, resolved):
        if self.root != "/" and resolved != self.root and not resolved.startswith(self.root + os.sep):
            raise SFTPError(FX_PERMISSION_DENIED, "outside the shared directory")
        return resolved

    def _absPath(self, path):
        """The path with every symlink resolved (for calls that follow links)."""
        return self._confined(os.path.realpath(self._joined(path)))

    def _entryPath(self, path):
        """The path with its directory resolved but its last component kept,
        for calls that act on a link itself (lstat, readlink, remove, rename)."""
        joined = self._joined(path)
        parent, name = os.path.split(joined)
        if not name or joined == self.root:
            return self._absPath(path)
        return os.path.join(self._confined(os.path.realpath(parent)), name)

    def realPath(self, path):
        absolute = self._absPath(path)
        if self.root == "/":
            return absolute
        rel = os.path.relpath(absolute, self.root)
        return "/" if rel == "." else "/" + rel

    def _refuse_if_read_only(self):
        if self.read_only:
            raise SFTPError(FX_PERMISSION_DENIED, "this host shares its files read-only")

    def gotVersion(self, otherVersion, extData):
        return dict(EXTENSIONS)

    def openFile(self, filename, flags, attrs):
        if flags & WRITE_FLAGS:
            self._refuse_if_read_only()
        return BoundedFile(self, self._absPath(filename), flags, attrs)

    def removeFile(self, filename):
        self._refuse_if_read_only()
        os.remove(self._entryPath(filename))

    def renameFile(self, oldpath, newpath):
        # SFTP v3 rename must not replace an existing target (OpenSSH: link+unlink).
        self._refuse_if_read_only()
        old, new = self._entryPath(oldpath), self._entryPath(newpath)
        if os.path.lexists(new):
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), new)
        os.rename(old, new)

    def getAttrs(self, path, followLinks):
        if followLinks:
            return self._getAttrs(os.stat(self._absPath(path)))
        return self._getAttrs(os.lstat(self._entryPath(path)))

    def readLink(self, path):
        return os.readlink(self._entryPath(path))

    def _setAttrs(self, path, attrs):
        if "size" in attrs:
            os.truncate(path, attrs["size"])
        super()._setAttrs(path, attrs)

    def extendedRequest(self, extName, extData):
        two_paths = {b"posix-rename@openssh.com": lambda old, new: os.rename(self._entryPath(old),
                                                                            self._entryPath(new)),
                     b"hardlink@openssh.com": lambda old, new: os.link(self._absPath(old), self._entryPath(new))}
        if extName in two_paths:
            old, rest = getNS(extData)
            new, _ = getNS(rest)
            self._refuse_if_read_only()
            two_paths[extName](old, new)
            return b""
        if extName == b"statvfs@openssh.com":
            path, _ = getNS(extData)
            st = os.statvfs(self._absPath(path))
            flags = st.f_flag | (1 if self.read_only else 0)  # ST_RDONLY
            return struct.pack(">11Q", st.f_bsize, st.f_frsize, st.f_blocks, st.f_bfree, st.f_bavail,
                               st.f_files, st.f_ffree, st.f_favail, 0, flags, st.f_namemax)
        raise NotImplementedError(f"unsupported extension {extName.decode('ascii', 'replace')}")

    def makeDirectory(self, path, attrs):
        self._refuse_if_read_only()
        return super().makeDirectory(path, attrs)

    def removeDirectory(self, path):
        self._refuse_if_read_only()
        os.rmdir(self._entryPath(path))

    def setAttrs(self, path, attrs):
        self._refuse_if_read_only()
        return super().setAttrs(path, attrs)

    def makeLink(self, linkPath, targetPath):
        # OpenSSH's client and sftp-server put SYMLINK's paths in the reverse of
        # the draft's order; the reference serves OpenSSH semantics, so do we.
        # The target is stored as given (relative links stay relative).
        self._refuse_if_read_only()
        target, link = linkPath, targetPath  # conch's names follow the draft
        if isinstance(target, bytes):
            target = target.decode("utf-8", "surrogateescape")
        os.symlink(target, self._entryPath(link))


class BoundedFile(UnixSFTPFile):
    """conch's unix file, with reads capped (a peer may not make us allocate
    gigabytes) and FSETSTAT implemented (truncate/chmod on an open handle)."""

    def readChunk(self, offset, length):
        return os.pread(self.fd, min(length, MAX_READ), offset)

    def writeChunk(self, offset, data):
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written

    def setAttrs(self, attrs):
        if self.server.read_only:
            raise SFTPError(FX_PERMISSION_DENIED, "this host shares its files read-only")
        if "size" in attrs:
            os.ftruncate(self.fd, attrs["size"])
        if "uid" in attrs and "gid" in attrs:
            os.fchown(self.fd, attrs["uid"], attrs["gid"])
        if "permissions" in attrs:
            os.fchmod(self.fd, attrs["permissions"])
        if "atime" in attrs and "mtime" in attrs:
            os.utime(self.fd, (attrs["atime"], attrs["mtime"]))


class BoundedFileTransferServer(filetransfer.FileTransferServer):
    """conch's SFTP server with OpenSSH's packet bound, and errors that say
    what failed (strerror), so that clients can map them back to errno."""

    _log = QuietLogger()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._packets = PacketGather(MAX_PACKET)

    def dataReceived(self, data):
        whole = self._packets.feed(self.buf, data)
        if whole is None:
            return
        if whole is PacketGather.TOO_BIG:
            self._log.warn("SFTP packet over {limit} bytes refused; closing", limit=MAX_PACKET)
            self.buf = b""
            self.transport.loseConnection()
            return
        super().dataReceived(whole)

    def packet_EXTENDED(self, data):
        # OpenSSH's rename/link extensions answer with a STATUS, not an
        # EXTENDED_REPLY (conch sends the latter for every extension).
        request_id, rest = data[:4], data[4:]
        name, ext_data = getNS(rest)
        if name not in STATUS_EXTENSIONS:
            return super().packet_EXTENDED(data)
        d = defer.maybeDeferred(self.client.extendedRequest, name, ext_data)
        d.addCallback(self._cbStatus, request_id)
        d.addErrback(self._ebStatus, request_id, name + b" failed")

    def _ebStatus(self, reason, requestId, msg=b"request failed"):
        err = reason.value
        if isinstance(err, OSError) and err.errno not in (errno.ENOENT, errno.EACCES) and err.strerror:
            # conch would say only "open failed"; v3 has no code for most errnos
            # (EEXIST's 11 is from v6), so the message carries strerror.
            self._sendStatus(requestId, FX_FAILURE, err.strerror.encode("utf-8", "replace"))
            return
        super()._ebStatus(reason, requestId, msg)


def make_sftp_protocol(avatar, sftp_config):
    server = ConfinedSFTPServer(sftp_config.root, sftp_config.read_only)
    return BoundedFileTransferServer(avatar=server)




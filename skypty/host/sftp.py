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
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.filetransfer import FX_FAILURE, FX_PERMISSION_DENIED, SFTPError
from twisted.conch.unix import SFTPServerForUnixConchUser, UnixSFTPFile
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from skypty.wire.sftppackets import Cork, PacketCutter, pack
from skypty.wire.sftp import QuietLogger

# OpenSSH's limits: a packet is at most 256 KiB, a read answers at most
# 255 KiB (shorter reads are legal SFTP, so clients loop).
MAX_PACKET = 256 * 1024
MAX_READ = MAX_PACKET - 1024

# How long replies may wait for the rest of a packet that is arriving.
REPLY_HOLD = 0.002

# Extensions we serve, with OpenSSH's names and versions; OpenSSH's sshfs and
# our FUSE client use them for POSIX rename, df and hard links.
EXTENSIONS = {
    b"posix-rename@openssh.com": b"1",
    b"statvfs@openssh.com": b"2",
    b"hardlink@openssh.com": b"1",
}
STATUS_EXTENSIONS = (b"posix-rename@openssh.com", b"hardlink@openssh.com")

_PROC_FD = os.path.isdir("/proc/self/fd")

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

    def _resolved(self, path):
        """*path* with every symlink resolved, as os.path.realpath says, but
        asked of the kernel in three system calls whatever its depth
        (realpath lstats each component in Python)."""
        if _PROC_FD:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                return os.path.realpath(path)  # missing: realpath resolves what exists
            try:
                found = os.readlink(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
            if found.startswith("/") and not found.endswith(" (deleted)"):
                return found
        return os.path.realpath(path)

    def _absPath(self, path):
        """The path with every symlink resolved (for calls that follow links).
        Under root / nothing is confined: the kernel resolves links itself."""
        if self.root == "/":
            return self._joined(path)
        return self._confined(self._resolved(self._joined(path)))

    def _entryPath(self, path):
        """The path with its directory resolved but its last component kept,
        for calls that act on a link itself (lstat, readlink, remove, rename)."""
        joined = self._joined(path)
        if self.root == "/":
            return joined
        parent, name = os.path.split(joined)
        if not name or joined == self.root:
            return self._absPath(path)
        return os.path.join(self._confined(self._resolved(parent)), name)

    def realPath(self, path):
        absolute = self._confined(os.path.realpath(self._joined(path)))
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


_HEADER = struct.Struct("!LB")  # length, type
_U32 = struct.Struct("!L")
_WRITE_HEAD = struct.Struct("!Q")
_READ_ARGS = struct.Struct("!QL")
_DATA_HEAD = struct.Struct("!LB4sL")  # length, FXP_DATA, request id, data length
_OK_STATUS = _U32.pack(filetransfer.FX_OK) + NS(b"") + NS(b"")


class BoundedFileTransferServer(filetransfer.FileTransferServer):
    """conch's SFTP server with OpenSSH's packet bound, and errors that say
    what failed (strerror), so that clients can map them back to errno.

    Packets are cut from one buffer here rather than by conch (which copies
    its whole buffer for every packet taken off it), the replies to what
    arrived in one read leave as one write, and the requests that
    bulk transfers and metadata walks are made of (WRITE, READ, STAT, LSTAT,
    FSTAT) are answered directly: the file calls are synchronous, so
    conch's Deferred round for each of them is pure overhead.  A WRITE's
    data goes to pwrite as a view of the received bytes, never copied.
    """

    _log = QuietLogger()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from twisted.internet import reactor

        self._cutter = PacketCutter(MAX_PACKET)
        self._cork = Cork(lambda data: self.transport.write(data))
        self._clock = reactor
        self._held_until = None  # the timer that ends a hold on replies
        self._refused = False
        self._direct = {
            filetransfer.FXP_WRITE: self._direct_write,
            filetransfer.FXP_READ: self._direct_read,
            filetransfer.FXP_LSTAT: lambda p: self._direct_stat(p, False),
            filetransfer.FXP_STAT: lambda p: self._direct_stat(p, True),
            filetransfer.FXP_FSTAT: self._direct_fstat,
        }

    def dataReceived(self, data):
        if self._refused:
            return
        packets, refused = self._cutter.feed(data)
        with self._cork:  # every reply to this read goes out as one write
            for kind, packet in packets:
                if len(packet) < 4:  # not even a request id
                    refused = len(packet) + 1
                    break
                direct = self._direct.get(kind)
                if direct is not None:
                    direct(packet)
                else:
                    self._conch_packet(kind, bytes(packet))
            self._hold_replies(self._cutter.holding and refused is None)
        if refused is not None:
            self._refuse(refused)

    def _hold_replies(self, hold):
        """While the peer is in the middle of sending a packet (a stream of
        128 KiB WRITEs), it is not waiting on our replies: keep them (at most
        REPLY_HOLD seconds) and send them together, instead of one small
        send per WRITE, which on loopback costs more than the WRITE itself."""
        if hold and self._held_until is None:
            self._cork.__enter__()
            self._held_until = self._clock.callLater(REPLY_HOLD, self._hold_replies, False)
        elif not hold and self._held_until is not None:
            if self._held_until.active():
                self._held_until.cancel()
            self._held_until = None
            self._cork.__exit__(None, None, None)

    def connectionLost(self, reason):
        if self._held_until is not None and self._held_until.active():
            self._held_until.cancel()
        self._held_until = None
        self._cork.discard()
        super().connectionLost(reason)

    def sendPacket(self, kind, data):
        self._cork.write(pack(kind, data))

    def _refuse(self, length):
        self._log.warn("SFTP packet of {length} bytes refused (over {limit}); closing", length=length,
                       limit=MAX_PACKET)
        self._refused = True
        self.transport.loseConnection()

    def _conch_packet(self, kind, packet):
        """What conch's own loop does with one packet."""
        name = self.packetTypes.get(kind)
        handler = getattr(self, f"packet_{name}", None) if name else None
        if handler is None:
            self._sendStatus(packet[:4], filetransfer.FX_OP_UNSUPPORTED, b"unsupported request")
            return
        try:
            handler(packet)
        except Exception:
            self._log.failure("Failed to handle packet of type {kind}", kind=name)

    def _status_ok(self, request_id):
        self._cork.write(_HEADER.pack(5 + len(_OK_STATUS), filetransfer.FXP_STATUS) + request_id + _OK_STATUS)

    def _failed(self, request_id, msg):
        self._ebStatus(Failure(), request_id, msg)

    def _handle_and_rest(self, packet):
        """-> (request id, handle, rest) of a handle request (views)."""
        (size,) = _U32.unpack_from(packet, 4)
        return bytes(packet[:4]), bytes(packet[8:8 + size]), packet[8 + size:]

    def _open_file(self, handle):
        found = self.openFiles.get(handle)
        if found is None:
            raise SFTPError(FX_FAILURE, "no such handle")  # what OpenSSH says, and no traceback in the log
        return found

    def _direct_write(self, packet):
        request_id, handle, rest = self._handle_and_rest(packet)
        try:
            (offset,) = _WRITE_HEAD.unpack_from(rest)
            (size,) = _U32.unpack_from(rest, 8)
            data = rest[12:12 + size]
            if len(data) != size:
                raise SFTPError(filetransfer.FX_BAD_MESSAGE, "truncated WRITE")
            self._open_file(handle).writeChunk(offset, data)
        except Exception:
            self._failed(request_id, b"write failed")
        else:
            self._status_ok(request_id)

    def _direct_read(self, packet):
        request_id, handle, rest = self._handle_and_rest(packet)
        try:
            offset, length = _READ_ARGS.unpack_from(rest)
            data = self._open_file(handle).readChunk(offset, length)
            if not data:
                raise EOFError("")
        except Exception:
            self._failed(request_id, b"read failed")
            return
        self._cork.write(_DATA_HEAD.pack(9 + len(data), filetransfer.FXP_DATA, request_id, len(data)) + data)

    def _direct_stat(self, packet, follow_links):
        request_id = bytes(packet[:4])
        try:
            path, _ = getNS(bytes(packet[4:]))
            attrs = self.client.getAttrs(path, follow_links)
        except Exception:
            self._failed(request_id, b"stat failed")
        else:
            self.sendPacket(filetransfer.FXP_ATTRS, request_id + self._packAttributes(attrs))

    def _direct_fstat(self, packet):
        request_id, handle, _ = self._handle_and_rest(packet)
        try:
            attrs = self._open_file(handle).getAttrs()
        except Exception:
            self._failed(request_id, b"fstat failed")
        else:
            self.sendPacket(filetransfer.FXP_ATTRS, request_id + self._packAttributes(attrs))

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




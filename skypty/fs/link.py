"""The mount's SFTP session: twisted.conch's FileTransferClient over a
skypty stream (Noise TCP, the local host's dmsg proxy, or a local command
such as OpenSSH's ``sftp-server``).

``SFTPLink`` connects lazily, reconnects after a drop and puts a deadline on
every request: a dead link makes requests fail (EIO at the mount) instead
of hanging, and the next request after the link returns starts a fresh
session.  ``RemoteFS`` is the file system API the FUSE layer calls; every
method returns a Deferred and runs in the reactor thread.
"""

import errno
import shutil
import struct

from twisted.conch.ssh import filetransfer as fx
from twisted.conch.ssh.common import NS
from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import HostnameEndpoint, ProcessEndpoint, UNIXClientEndpoint
from twisted.logger import Logger

from skypty.fs import replies
from skypty.fs.errors import HostRefused, LinkDown, is_generic_failure
from skypty.wire.sftppackets import Cork, PacketCutter, pack
from skypty.wire.sftp import QuietLogger
from skypty.wire import requestline

log = Logger()

# Replies are at most one read (we ask for <= 64 KiB) or one directory
# page; OpenSSH caps packets at 256 KiB.  A server sending more is hostile.
MAX_REPLY_PACKET = 1024 * 1024
_DATA_HEAD = struct.Struct("!LL")  # request id, data length
# A listing is held whole (the mount caches it): a host listing without end
# would take all memory.  Past this many entries the directory is refused.
MAX_LISTING = 1_000_000
_WRITE_HEAD = struct.Struct("!LBL")  # length, FXP_WRITE, request id
_OFFSET_AND_SIZE = struct.Struct("!QL")


class SFTPClientProtocol(fx.FileTransferClient):
    """conch's SFTP client; ``ready`` fires with itself once the server's
    VERSION (and its extensions) arrived, ``lost`` when the stream ends."""

    _log = QuietLogger()

    def __init__(self):
        super().__init__()
        self._cutter = PacketCutter(MAX_REPLY_PACKET)
        self.cork = Cork(lambda data: self.transport.write(data))
        self.ready = defer.Deferred()
        self.lost = defer.Deferred()
        self.extensions = {}

    def gotServerVersion(self, serverVersion, extData):
        self.extensions = extData
        if not self.ready.called:
            self.ready.callback(self)

    def dataReceived(self, data):
        packets, refused = self._cutter.feed(data)
        for kind, packet in packets:
            if kind == fx.FXP_DATA and len(packet) >= 8:
                # A read's bytes: one copy out of the received buffer, no more.
                (request_id, size) = _DATA_HEAD.unpack_from(packet)
                found = self.openRequests.pop(request_id, None)
                if found is not None:
                    found.callback(bytes(packet[8:8 + size]))
                continue
            name = self.packetTypes.get(kind)
            handler = getattr(self, f"packet_{name}", None) if name else None
            if handler is None:
                continue
            try:
                handler(bytes(packet))
            except Exception:
                log.failure("bad SFTP reply of type {kind}", kind=name)
        if refused is not None:
            log.warn("SFTP reply over {limit} bytes; dropping the session", limit=MAX_REPLY_PACKET)
            abort(self.transport)

    def sendPacket(self, kind, data):
        self.cork.write(pack(kind, data))

    def _cbOpenHandle(self, handle, handleClass, name):
        if handleClass is fx.ClientFile:
            handleClass = _ClientFile
        return super()._cbOpenHandle(handle, handleClass, name)

    def write_request(self, handle, offset, data):
        """A WRITE built in one piece: conch's writeChunk copies a 128 KiB
        chunk four times on its way into a packet."""
        if not self.connected:
            return defer.fail(error.ConnectionLost())
        request_id = self.counter
        self.counter += 1
        d = self.openRequests[request_id] = defer.Deferred()
        head = _WRITE_HEAD.pack(1 + 4 + len(handle) + 8 + 4 + len(data), fx.FXP_WRITE, request_id)
        self.cork.write(b"".join((head, handle, _OFFSET_AND_SIZE.pack(offset, len(data)), data)))
        return d

    def connectionLost(self, reason=protocol.connectionDone):
        super().connectionLost(reason)
        if not self.ready.called:
            self.ready.errback(LinkDown("the host ended the SFTP session before it started "
                                        "(is SFTP enabled there? a non-skypty host cannot relay it)"))
        if not self.lost.called:
            self.lost.callback(None)

    def fsetstat(self, handle, attrs):
        # conch's ClientFile.setAttrs sends FSTAT by mistake; this is FSETSTAT.
        return self._sendRequest(fx.FXP_FSETSTAT, handle + self._packAttributes(attrs))

    # NAME, ATTRS and STATUS through skypty.fs.replies: conch's parsers trust
    # the host's lengths and raise on non-ASCII texts (the request then hung).

    def _answer(self, data, parse):
        """-> (the asked request's Deferred, parsed reply), or None when
        there is nothing to answer (an unknown id) or the reply was bad
        (that request fails and the session is dropped)."""
        if len(data) < 4:
            abort(self.transport)
            return None
        pending = self.openRequests.pop(replies.request_id(data), None)
        if pending is None:
            return None
        try:
            return pending, parse(data)
        except replies.BadReply as e:
            pending.errback(LinkDown(f"the host sent a malformed SFTP reply ({e}); dropped the session"))
            abort(self.transport)
            return None

    def packet_NAME(self, data):
        answer = self._answer(data, replies.parse_name)
        if answer is not None:
            answer[0].callback(answer[1][1])

    def packet_ATTRS(self, data):
        answer = self._answer(data, replies.parse_attrs_reply)
        if answer is not None:
            answer[0].callback(answer[1][1])

    def packet_HANDLE(self, data):
        answer = self._answer(data, replies.parse_handle)
        if answer is not None:
            answer[0].callback(answer[1][1])

    packet_DATA = packet_HANDLE  # only a DATA too short for the direct path in dataReceived comes here

    def packet_STATUS(self, data):
        answer = self._answer(data, replies.parse_status)
        if answer is None:
            return
        d, (_, code, message, lang) = answer
        if code == fx.FX_OK:
            d.callback((message, lang))
        elif code == fx.FX_EOF:
            d.errback(EOFError(message))
        elif code == fx.FX_OP_UNSUPPORTED:
            d.errback(NotImplementedError(message))
        else:  # any bytes: printed through skypty.client.textsafe
            d.errback(fx.SFTPError(code, message.decode("utf-8", "surrogateescape"), lang))


class _ClientFile(fx.ClientFile):
    def writeChunk(self, offset, chunk):
        return self.parent.write_request(self.handle, offset, chunk)


class ServiceGate(protocol.Protocol):
    """Sends a request line; once the host accepts, the stream belongs to
    *inner* (``accepted`` fires), else ``accepted`` fails with the reason."""

    def __init__(self, uri, inner, vet=None):
        self.uri, self.inner = uri, inner
        self.vet = vet  # transport -> a refusal (another user's control socket: not one byte) or None
        self.accepted = defer.Deferred()
        self._open = False

    def connectionMade(self):
        refusal = self.vet(self.transport) if self.vet is not None else None
        if refusal is not None:
            self.accepted.errback(HostRefused(refusal))
            self.transport.abortConnection()
            return
        self.transport.write(requestline.encode_request(self.uri))

    def dataReceived(self, data):
        if self._open:
            self.inner.dataReceived(data)
            return
        if not data:
            return
        if data[:1] != requestline.ACCEPT:
            self.transport.loseConnection()
            self.accepted.errback(HostRefused("not authorized: the host rejected the request"))
            return
        self._open = True
        self.inner.makeConnection(self.transport)
        self.accepted.callback(None)
        if data[1:]:
            self.inner.dataReceived(data[1:])

    def connectionLost(self, reason=protocol.connectionDone):
        if self._open:
            self.inner.connectionLost(reason)
        elif not self.accepted.called:
            self.accepted.errback(HostRefused("not authorized: the host closed the connection "
                                           "(this key is not on its whitelist, or it serves no SFTP)"))


def abort(transport):
    """Drop a stream now, whatever it is wrapped in (Noise wraps TCP)."""
    while transport is not None and not hasattr(transport, "abortConnection"):
        inner = getattr(transport, "transport", None)
        if inner is None:
            transport.loseConnection()
            return
        transport = inner
    if transport is not None:
        transport.abortConnection()


# -- ways to reach an SFTP server ---------------------------------------------------

def noise_tcp_connector(reactor, host, port, local_sk, remote_pk, timeout):
    """A direct Noise XK connection to ``host:port`` (the host's ssh_listen)."""
    from skypty.wire.noiseproto import connect_noise_xk

    def connect():
        sftp = SFTPClientProtocol()
        gate = ServiceGate(requestline.SFTP, sftp)
        endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
        d = connect_noise_xk(endpoint, local_sk, remote_pk,
                             protocol.Factory.forProtocol(lambda: gate), reactor=reactor)
        d.addCallback(lambda _: gate.accepted)
        d.addCallback(lambda _: sftp.ready)
        return d
    return connect


class ReasonedGate(ServiceGate):
    """The local host says why it could not reach the peer (the reject byte,
    then "reason-word: text"); *explain*(reason, text) words it for the user
    (the client's, so this layer needs none of the client's vocabulary)."""

    def __init__(self, uri, inner, explain, vet=None):
        super().__init__(uri, inner, vet)
        self.explain = explain

    def dataReceived(self, data):
        if not self._open and data[:1] not in (b"", requestline.ACCEPT) and not self.accepted.called:
            reason, text = requestline.parse_rejection(data[1:])
            self.transport.loseConnection()
            self.accepted.errback(HostRefused(self.explain(reason, text)))
            return
        super().dataReceived(data)


def control_socket_connector(reactor, network, address, remote_pk, port, timeout, explain, vet=None,
                             scheme=None):
    """Through the local host, which dials the peer over dmsg
    (``dmsgpty/proxy?...&service=sftp``; ``&scheme=`` pins a transport);
    *explain*(reason, text) words the local host's refusal, *vet*(transport)
    refuses a control socket before a byte is sent (see ServiceGate)."""
    uri = requestline.proxy_uri(remote_pk.hex(), port, service="sftp") + (f"&scheme={scheme}" if scheme else "")

    def connect():
        sftp = SFTPClientProtocol()
        gate = ReasonedGate(uri, sftp, explain, vet)
        if network == "unix":
            endpoint = UNIXClientEndpoint(reactor, address, timeout=timeout)
        else:
            host, _, tcp_port = address.rpartition(":")
            endpoint = HostnameEndpoint(reactor, host.strip("[]") or "127.0.0.1", int(tcp_port),
                                        timeout=timeout)
        d = endpoint.connect(protocol.Factory.forProtocol(lambda: gate))
        d.addCallback(lambda _: gate.accepted)
        d.addCallback(lambda _: sftp.ready)
        return d
    return connect


def command_connector(reactor, argv, env):
    """A local command speaking SFTP on its stdin/stdout (OpenSSH's
    sftp-server, or ``ssh host -s sftp``), like sshfs's passive mode."""
    executable = shutil.which(argv[0])
    if executable is None:
        raise LinkDown(f"{argv[0]}: command not found")

    def connect():
        sftp = SFTPClientProtocol()
        d = ProcessEndpoint(reactor, executable, argv, env=env).connect(
            protocol.Factory.forProtocol(lambda: sftp))
        d.addCallback(lambda _: sftp.ready)
        return d
    return connect


def describe(failure):
    err = failure.value
    if isinstance(err, LinkDown):
        return str(err)
    if isinstance(err, (defer.TimeoutError, error.TimeoutError, defer.CancelledError)):
        return "the host did not answer in time"
    if isinstance(err, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, (error.ConnectError, OSError)):
        return str(err).strip() or err.__class__.__name__
    return f"{err.__class__.__name__}: {err}"


class SFTPLink:
    """One SFTP session at a time, made on demand.

    After a failed attempt, requests fail at once for *retry_after* seconds
    (a down host answers EIO quickly instead of stalling every syscall).
    """

    def __init__(self, reactor, connect, timeout=15.0, retry_after=1.0):
        self.reactor, self._connect = reactor, connect
        self.timeout, self.retry_after = timeout, retry_after
        self.generation = 0  # bumped per session: SFTP handles die with theirs
        self.extensions = {}
        self.last_error = None
        self._last_error_class = LinkDown
        self._client = None
        self._waiters = None
        self._down_until = 0.0
        self._closed = False

    @property
    def connected(self):
        return self._client is not None and self._client.connected

    def session(self):
        if self._closed:
            return defer.fail(LinkDown("unmounting"))
        if self.connected:
            return defer.succeed(self._client)
        waiter = defer.Deferred()
        if self._waiters is not None:  # a connect is under way: wait for it
            self._waiters.append(waiter)
            return waiter
        if self.reactor.seconds() < self._down_until:
            return defer.fail(self._last_error_class(self.last_error or "the host is unreachable"))
        self._waiters = [waiter]
        d = defer.maybeDeferred(self._connect)
        d.addTimeout(self.timeout, self.reactor)
        d.addCallbacks(self._up, self._down)
        return waiter

    def _up(self, client):
        self._client = client
        self.generation += 1
        self.extensions = client.extensions
        if self.generation > 1:
            log.info("SFTP session re-established")
        client.lost.addCallback(lambda _: self._lost(client))
        waiters, self._waiters = self._waiters, None
        for w in waiters:
            w.callback(client)

    def _down(self, failure):
        self.last_error = describe(failure)
        # a refusal stays one (the mount words it as the host's answer, not as "cannot reach")
        self._last_error_class = HostRefused if failure.check(HostRefused) else LinkDown
        self._down_until = self.reactor.seconds() + self.retry_after
        log.warn("cannot reach the host: {why}", why=self.last_error)
        waiters, self._waiters = self._waiters, None
        for w in waiters:
            w.errback(self._last_error_class(self.last_error))

    def _lost(self, client):
        if self._client is client:
            self._client = None
            if not self._closed:
                log.warn("SFTP session lost; reconnecting on the next request")

    def call(self, request):
        """``request(client) -> Deferred`` on the current session, with the
        link's deadline; a missed deadline drops the session."""
        def run(client):
            d = request(client)
            d.addTimeout(self.timeout, self.reactor)
            d.addErrback(self._request_failed, client)
            return d
        return self.session().addCallback(run)

    def _request_failed(self, failure, client):
        if failure.check(defer.TimeoutError, defer.CancelledError):
            self.last_error = f"no answer from the host in {self.timeout:g}s"
            if self._client is client:
                abort(client.transport)
            raise LinkDown(self.last_error)
        if failure.check(error.ConnectionLost, error.ConnectionDone):
            raise LinkDown("the link to the host dropped")
        return failure

    def close(self):
        self._closed = True
        if self.connected:
            self._client.transport.loseConnection()

    def corked(self):
        """A context in which requests on the current session are held and
        sent as one write when it ends (a no-op without a session)."""
        return self._client.cork if self.connected else _NOTHING_TO_CORK


class _NothingToCork:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NOTHING_TO_CORK = _NothingToCork()


class RemoteFS:
    """Path-level operations on the host (paths are bytes, absolute)."""

    def __init__(self, link):
        self.link = link

    def lstat(self, path):
        return self.link.call(lambda c: c.getAttrs(path, 0))

    def then_lstat(self, send, path):
        """``send()`` (a request) and an LSTAT of *path* right behind it, in
        one write and without waiting: one round trip for a change and the
        attributes it left (servers answer requests in order).  ->
        Deferred[(result of the request, attrs)]; a failure of the request
        wins over one of the LSTAT."""
        with self.link.corked():
            d = send()
            stat = self.lstat(path)
        both = defer.DeferredList([d, stat], consumeErrors=True)

        def pick(results):
            (done, result), (stated, attrs) = results
            if not done:
                return result
            if not stated:
                return attrs
            return result, attrs
        return both.addCallback(pick)

    def setstat(self, path, attrs):
        return self.link.call(lambda c: c.setAttrs(path, attrs))

    def fsetstat(self, remote_file, attrs):
        """SETSTAT through an open handle: no path to resolve, and ordered
        after that handle's writes already sent."""
        return remote_file.on_handle(lambda h: h.parent.fsetstat(h.handle, attrs))

    @defer.inlineCallbacks
    def listdir(self, path):
        """-> [(name, attrs)] without '.' and '..'."""
        directory = yield self.link.call(lambda c: c.openDirectory(path))
        entries, listed = [], 0
        try:
            # READDIRs go two at a time: a directory that fits in one page
            # (and the EOF that ends it) costs one round trip, not two.
            done = False
            while not done:
                with self.link.corked():
                    pages = [self.link.call(lambda c: directory.read()) for _ in range(2)]
                for ok, found in (yield defer.DeferredList(pages, consumeErrors=True)):
                    if not ok:
                        found.trap(EOFError)
                        done = True
                    elif not done:
                        entries.extend((name, attrs) for name, _, attrs in found if _plain(name))
                        listed += len(found) or 1  # empty pages without end count too
                if listed > MAX_LISTING:
                    log.warn("{path}: the host listed more than {n} entries; refused",
                             path=path.decode("utf-8", "backslashreplace"), n=MAX_LISTING)
                    raise OSError(errno.EIO, f"more than {MAX_LISTING} entries", path)
        finally:
            if self.link.connected:
                directory.close().addErrback(lambda _: None)
        return entries

    def open(self, path, pflags, attrs=None):
        """-> Deferred[(ClientFile, the generation of the session it lives in)]."""
        d = self.link.call(lambda c: c.openFile(path, pflags, dict(attrs or {})))
        return d.addCallback(lambda handle: (handle, self.link.generation))

    @defer.inlineCallbacks
    def _explain(self, failure, path, decide):
        """OpenSSH answers a bare FX_FAILURE; look at *path* to name the errno."""
        if not is_generic_failure(failure.value):
            return failure
        try:
            attrs = yield self.lstat(path)
        except Exception:
            attrs = None
        code = decide(attrs)
        if code is None:
            return failure
        raise OSError(code, errno.errorcode.get(code, "error"), path)

    def mkdir(self, path, mode):
        d = self.link.call(lambda c: c.makeDirectory(path, {"permissions": mode}))
        return d.addErrback(self._explain, path, lambda a: errno.EEXIST if a is not None else errno.EIO)

    def rmdir(self, path):
        @defer.inlineCallbacks
        def explain(failure):
            if not is_generic_failure(failure.value):
                return failure
            try:
                attrs = yield self.lstat(path)
            except Exception:
                return failure
            if not _is_dir(attrs):
                raise OSError(errno.ENOTDIR, "Not a directory", path)
            if (yield self.listdir(path)):
                raise OSError(errno.ENOTEMPTY, "Directory not empty", path)
            return failure
        return self.link.call(lambda c: c.removeDirectory(path)).addErrback(explain)

    def remove(self, path):
        d = self.link.call(lambda c: c.removeFile(path))
        return d.addErrback(self._explain, path, lambda a: errno.EISDIR if a is not None and _is_dir(a)
                            else errno.EPERM)

    @defer.inlineCallbacks
    def rename(self, old, new):
        """POSIX rename (replaces *new*), with OpenSSH's extension when the
        server has it; otherwise SFTP's rename, clearing the target first."""
        if b"posix-rename@openssh.com" in self.link.extensions:
            yield self.link.call(lambda c: c.extendedRequest(b"posix-rename@openssh.com", NS(old) + NS(new)))
            return
        try:
            yield self.link.call(lambda c: c.renameFile(old, new))
        except fx.SFTPError as e:
            if not (e.code == fx.FX_FAILURE or e.code == fx.FX_FILE_ALREADY_EXISTS):
                raise
            target = yield self.lstat(new)  # ENOENT here: the failure was something else
            yield (self.rmdir(new) if _is_dir(target) else self.remove(new))
            yield self.link.call(lambda c: c.renameFile(old, new))

    def symlink(self, target, path):
        # OpenSSH's order: the target first (conch's client sends its first
        # argument first).
        return self.link.call(lambda c: c.makeLink(target, path))

    def readlink(self, path):
        d = self.link.call(lambda c: c._sendRequest(fx.FXP_READLINK, NS(path)))

        def target(names):
            if not names:  # a NAME reply with no name in it
                raise OSError(errno.EIO, "the host named no link target", path)
            return names[0][0]
        return d.addCallback(target)

    def hardlink(self, old, new):
        if b"hardlink@openssh.com" not in self.link.extensions:
            return defer.fail(OSError(errno.ENOTSUP, "the server has no hard links", new))
        return self.link.call(lambda c: c.extendedRequest(b"hardlink@openssh.com", NS(old) + NS(new)))

    @defer.inlineCallbacks
    def statvfs(self, path):
        """-> dict of statvfs fields, or None when the server cannot tell."""
        if b"statvfs@openssh.com" not in self.link.extensions:
            return None
        data = yield self.link.call(lambda c: c.extendedRequest(b"statvfs@openssh.com", NS(path)))
        if len(data) < 88:
            return None
        names = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                 "f_favail", "f_fsid", "f_flag", "f_namemax")
        return dict(zip(names, struct.unpack(">11Q", data[:88])))


def _plain(name):
    """A name the kernel can take as one entry (it refuses the whole
    directory for one with '/' or NUL): a host's other names are left out."""
    return name not in (b"", b".", b"..") and b"/" not in name and b"\0" not in name


def _is_dir(attrs):
    import stat

    return stat.S_ISDIR(attrs.get("permissions", 0))

"""An open remote file: read-ahead and write-behind, so that throughput is
not one round trip per request.

Reads are served from a grid of 128 KiB chunks; a sequential reader gets the
next ``READ_AHEAD`` chunks requested before it asks (topped up in batches,
one write each).  Writes are sent at
once and acknowledged to the kernel without waiting, up to ``WRITE_WINDOW``
bytes in flight; the first failure is kept and reported by the next write,
flush (close) or fsync, as sshfs does, so no error is lost.

Runs in the reactor thread; every method returns a Deferred.
"""

import threading

from twisted.internet import defer
from twisted.python.failure import Failure

CHUNK = 128 * 1024
READ_AHEAD = 16  # chunks (1 MiB) ahead of a sequential reader
WRITE_WINDOW = 8 * 1024 * 1024
WRITE_PIECE = 128 * 1024  # OpenSSH takes packets up to 256 KiB


class Shared:
    """One Deferred result that many readers may wait on."""

    def __init__(self, d):
        self.done, self.result, self._waiters = False, None, []
        d.addBoth(self._fire)

    def _fire(self, result):
        self.result = result
        self.done = True  # after the result: FUSE threads look at done, then result (read_ready)
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            (w.errback if isinstance(result, Failure) else w.callback)(result)
        return None  # the failure, if any, is handed to every waiter

    def wait(self):
        if self.done:
            return defer.fail(self.result) if isinstance(self.result, Failure) else defer.succeed(self.result)
        w = defer.Deferred()
        self._waiters.append(w)
        return w


class RemoteFile:
    def __init__(self, fs, path, pflags, handle, generation):
        self.fs, self.path = fs, path
        self.pflags = pflags  # to reopen after a reconnect (without CREAT/TRUNC/EXCL)
        self._handle, self._generation = handle, generation
        self._chunks = {}  # chunk index -> Shared(bytes)
        self._eof_chunk = None
        self._next_read = 0
        self._writes = set()
        self._in_flight = 0
        self._queued = 0  # handed over by write_from_thread, not yet sent
        self._queue_lock = threading.Lock()
        self._window_waiters = []
        self._error = None
        self._closed = False

    # -- the SFTP handle, reopened after the link came back ------------------------

    @defer.inlineCallbacks
    def handle(self):
        link = self.fs.link
        if self._generation == link.generation and link.connected:
            return self._handle
        from twisted.conch.ssh import filetransfer as fx

        flags = self.pflags & ~(fx.FXF_CREAT | fx.FXF_TRUNC | fx.FXF_EXCL)
        self._handle, self._generation = yield self.fs.open(self.path, flags)
        return self._handle

    @property
    def handle_current(self):
        """True when the handle is usable now (a request on it is sent at once)."""
        link = self.fs.link
        return self._generation == link.generation and link.connected

    def on_handle(self, request):
        """``request(handle) -> Deferred`` through the link's deadline."""
        return self.handle().addCallback(lambda h: self.fs.link.call(lambda _client: request(h)))

    # -- reads ------------------------------------------------------------------------

    def read(self, offset, size):
        if size <= 0 or self._closed:  # closed: a window slide queued by read_ready's caller, too late
            return defer.succeed(b"")
        first, last = offset // CHUNK, (offset + size - 1) // CHUNK
        sequential = offset == self._next_read
        self._next_read = offset + size
        ahead = READ_AHEAD if sequential else 0
        for index in [i for i in self._chunks if i < first or i > last + READ_AHEAD]:
            del self._chunks[index]
        if ahead and all(i in self._chunks for i in range(last + 1, last + 1 + READ_AHEAD // 2)):
            # Enough is on its way: top the window up in batches of half of
            # it (one write of 8 requests) rather than one request per read.
            ahead = 0
        with self.fs.link.corked():  # the read-ahead requests leave as one write
            for index in range(first, last + 1 + ahead):
                if self._eof_chunk is not None and index > self._eof_chunk:
                    break
                known = self._chunks.get(index)
                if known is None or (known.done and isinstance(known.result, Failure)):
                    self._chunks[index] = Shared(self._fetch(index))  # failures are not cached
        wanted = [self._chunks[i].wait() if i in self._chunks else defer.succeed(b"")
                  for i in range(first, last + 1)]
        d = defer.gatherResults(wanted, consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure)  # the first failure itself
        start = offset - first * CHUNK
        return d.addCallback(lambda parts: b"".join(parts)[start:start + size])

    def read_ready(self, offset, size):
        """From a FUSE worker thread: the bytes, if every chunk they lie in
        has already arrived (the reactor only adds and drops whole entries);
        else None.  The caller then calls ``read`` in the reactor anyway, so
        the window slides on."""
        if size <= 0:
            return None
        first, last = offset // CHUNK, (offset + size - 1) // CHUNK
        eof = self._eof_chunk
        parts = []
        for index in range(first, last + 1):
            if eof is not None and index > eof:
                parts.append(b"")
                continue
            known = self._chunks.get(index)
            if known is None or not known.done or not isinstance(known.result, bytes):
                return None  # not here yet, or failed (the reactor's read reports it)
            parts.append(known.result)
        start = offset - first * CHUNK
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return data[start:start + size]

    def window_full(self, offset, size):
        """From a FUSE thread, after read_ready: True while at least half the
        read-ahead window past this read is asked for or here (then ``read``
        would send nothing: the reactor need not even be woken)."""
        last = (offset + size - 1) // CHUNK
        if offset != self._next_read or any(i not in self._chunks
                                            for i in range(last + 1, last + 1 + READ_AHEAD // 2)):
            return False
        self._next_read = offset + size
        return True

    @defer.inlineCallbacks
    def _fetch(self, index):
        """Chunk *index*, whole unless the file ends in it (servers may
        answer short reads; ask again for the rest)."""
        start, data = index * CHUNK, b""
        try:
            while len(data) < CHUNK:
                piece = yield self.on_handle(lambda h: h.readChunk(start + len(data), CHUNK - len(data)))
                if not piece:
                    break
                data += piece
        except EOFError:
            self._eof_chunk = index if self._eof_chunk is None else min(self._eof_chunk, index)
        return data

    def _forget_reads(self):
        self._chunks.clear()
        self._eof_chunk = None

    # -- writes -----------------------------------------------------------------------

    def write(self, offset, data):
        if self._error is not None:
            return self._report()
        self._forget_reads()
        for at in range(0, len(data), WRITE_PIECE):
            self._send(offset + at, bytes(data[at:at + WRITE_PIECE]))
        if self._in_flight <= WRITE_WINDOW:
            return defer.succeed(len(data))
        w = defer.Deferred()
        self._window_waiters.append(w)
        return w.addCallback(lambda _: len(data))

    def write_from_thread(self, reactor, offset, data):
        """From a FUSE worker thread: hand the write to the reactor without
        waiting for it, when the window has room and no error is waiting to
        be reported; -> False when the caller must take the waiting path.
        (Calls into the reactor run in order, so whatever the thread asks
        next still comes after this write.)"""
        with self._queue_lock:
            if self._error is not None or self._in_flight + self._queued + len(data) > WRITE_WINDOW:
                return False
            self._queued += len(data)
        reactor.callFromThread(self._queued_write, offset, data)
        return True

    def _queued_write(self, offset, data):
        with self._queue_lock:
            self._queued -= len(data)
        if self._error is None:  # else it stays for the next write or flush to report
            self.write(offset, data)

    def _send(self, offset, piece):
        self._in_flight += len(piece)
        d = self.on_handle(lambda h: h.writeChunk(offset, piece))
        self._writes.add(d)

        def done(result):
            self._writes.discard(d)
            self._in_flight -= len(piece)
            if isinstance(result, Failure) and self._error is None:
                self._error = result
            if self._in_flight <= WRITE_WINDOW // 2 or self._error is not None:
                waiters, self._window_waiters = self._window_waiters, []
                for w in waiters:
                    w.callback(None)
            return None
        d.addBoth(done)

    def _report(self):
        error, self._error = self._error, None
        return defer.fail(error)

    @defer.inlineCallbacks
    def flush(self):
        """Every write so far has landed (or its error is raised, once)."""
        while self._writes:
            yield defer.DeferredList(list(self._writes))
        if self._error is not None:
            yield self._report()

    @defer.inlineCallbacks
    def landed(self):
        """Every write so far has been answered; errors stay for flush."""
        while self._writes:
            yield defer.DeferredList(list(self._writes))

    def truncated(self):
        self._forget_reads()

    @defer.inlineCallbacks
    def close(self):
        if self._closed:
            return
        self._closed = True
        try:
            yield self.flush()
        finally:
            link = self.fs.link
            if self._generation == link.generation and link.connected:
                yield self._handle.close().addErrback(lambda _: None)

    @property
    def pending_writes(self):
        return bool(self._writes) or self._queued > 0

"""The FUSE client's cores without a mount: inode bookkeeping, errno
mapping, the link's deadlines (task.Clock) and read-ahead/write-behind."""

import errno

import pytest
from twisted.conch.ssh import filetransfer as fx
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from skypty.fs.errors import LinkDown, errno_for, is_generic_failure
from skypty.fs.files import CHUNK, READ_AHEAD, WRITE_WINDOW, RemoteFile
from skypty.fs.inodes import ROOT_INODE, InodeTable, StaleInode
from skypty.fs.link import SFTPClientProtocol, SFTPLink


# -- inodes ----------------------------------------------------------------------------

def test_lookups_and_forget():
    t = InodeTable(b"/srv")
    a = t.remember(b"/srv/a")
    assert t.remember(b"/srv/a") == a and t.path(a) == b"/srv/a"
    t.forget(a, 1)
    assert t.known(b"/srv/a") == a
    t.forget(a, 1)
    assert t.known(b"/srv/a") is None and len(t) == 1
    with pytest.raises(StaleInode):
        t.path(a)
    t.forget(ROOT_INODE, 5)  # the root stays
    assert t.path(ROOT_INODE) == b"/srv"


def test_rename_moves_a_whole_tree_and_replaces_the_target():
    t = InodeTable(b"/")
    d, f, other = t.remember(b"/d"), t.remember(b"/d/sub/f"), t.remember(b"/e")
    t.renamed(b"/d", b"/e")
    assert t.path(d) == b"/e" and t.path(f) == b"/e/sub/f"
    with pytest.raises(StaleInode):
        t.path(other)  # replaced: nameless until the kernel forgets it
    assert t.known(b"/d") is None and t.known(b"/d/sub/f") is None
    t.renamed(b"/e/sub", b"/e/subway")
    assert t.path(f) == b"/e/subway/f"
    t.renamed(b"/e/sub", b"/x")  # a prefix that is not a path component moves nothing
    assert t.path(f) == b"/e/subway/f"


def test_child_names():
    t = InodeTable(b"/srv")
    sub = t.remember(b"/srv/sub")
    assert t.child(ROOT_INODE, b"..") == b"/srv"  # never above the mounted root
    assert t.child(sub, b"..") == b"/srv" and t.child(sub, b".") == b"/srv/sub"
    t.removed(b"/srv/sub")
    with pytest.raises(StaleInode):
        t.child(sub, b"x")


# -- errno -----------------------------------------------------------------------------

@pytest.mark.parametrize("exc, expected", [
    (fx.SFTPError(fx.FX_NO_SUCH_FILE, "No such file"), errno.ENOENT),
    (fx.SFTPError(fx.FX_PERMISSION_DENIED, "denied"), errno.EACCES),
    (fx.SFTPError(fx.FX_FAILURE, "Directory not empty"), errno.ENOTEMPTY),
    (fx.SFTPError(fx.FX_FAILURE, "File exists"), errno.EEXIST),
    (fx.SFTPError(fx.FX_FAILURE, "Failure"), errno.EIO),
    (fx.SFTPError(fx.FX_OP_UNSUPPORTED, "no"), errno.ENOTSUP),
    (NotImplementedError("x"), errno.ENOTSUP),
    (LinkDown("gone"), errno.EIO),
    (OSError(errno.EISDIR, "Is a directory"), errno.EISDIR),
    (RuntimeError("?"), errno.EIO),
])
def test_errno_for(exc, expected):
    assert errno_for(exc) == expected


def test_generic_failures_are_told_apart():
    assert is_generic_failure(fx.SFTPError(fx.FX_FAILURE, "Failure"))
    assert not is_generic_failure(fx.SFTPError(fx.FX_FAILURE, "Directory not empty"))
    assert not is_generic_failure(fx.SFTPError(fx.FX_NO_SUCH_FILE, "x"))


# -- the link ----------------------------------------------------------------------------

def connected_client(clock):
    client = SFTPClientProtocol()
    transport = StringTransport()
    client.makeConnection(transport)
    client.gotServerVersion(3, {b"statvfs@openssh.com": b"2"})
    return client, transport


def test_an_unanswered_request_fails_with_linkdown_and_drops_the_session():
    clock = task.Clock()
    client, transport = connected_client(clock)
    link = SFTPLink(clock, lambda: defer.succeed(client), timeout=5)
    outcome = []
    link.call(lambda c: c.getAttrs(b"/x", 0)).addBoth(outcome.append)
    assert transport.value()  # the request went out
    clock.advance(4.9)
    assert outcome == []
    clock.advance(0.2)
    assert isinstance(outcome[0].value, LinkDown) and "no answer" in str(outcome[0].value)
    assert transport.disconnecting  # aborted: the next request starts a new session


def test_failed_connects_are_not_retried_for_a_moment():
    clock = task.Clock()
    attempts = []

    def connect():
        attempts.append(clock.seconds())
        return defer.fail(ConnectionRefusedError("refused"))

    link = SFTPLink(clock, connect, timeout=5, retry_after=1.0)
    for _ in range(3):
        d = link.call(lambda c: c.getAttrs(b"/", 0))
        assert isinstance(d.result.value, LinkDown)
        d.addErrback(lambda _: None)
    assert len(attempts) == 1
    clock.advance(1.5)
    link.call(lambda c: c.getAttrs(b"/", 0)).addErrback(lambda _: None)
    assert len(attempts) == 2


def test_a_host_refusal_reaches_the_mount_as_the_hosts_answer():
    # Seen against a Skywire v1.3.28 dmsgpty-host (no SFTP service): fs mount said
    # "cannot reach the host: host <pk> serves no files ..." although the host was reached.
    from twisted.python.failure import Failure

    from skypty.fs.errors import HostRefused
    from skypty.fs.link import ReasonedGate
    from skypty.fs.mount import start_failure_message
    from skypty.wire import requestline

    gate = ReasonedGate("dmsgpty/proxy?addr=x", SFTPClientProtocol(),
                        lambda reason, text: f"host X serves no files ({reason})")
    gate.makeConnection(StringTransport())
    refused = []
    gate.accepted.addErrback(refused.append)
    gate.dataReceived(requestline.encode_rejection("no-sftp", "no SFTP service"))
    assert refused[0].check(HostRefused)

    clock = task.Clock()
    link = SFTPLink(clock, lambda: defer.fail(refused[0].value), retry_after=1.0)
    for _ in range(2):  # the first attempt, then the quick answer during retry_after
        outcome = []
        link.session().addErrback(outcome.append)
        assert outcome[0].check(HostRefused)
        assert start_failure_message(outcome[0], b"/") == "host X serves no files (no-sftp)"

    unreachable = Failure(LinkDown("connection refused"))
    assert start_failure_message(unreachable, b"/") == "cannot reach the host: connection refused"
    missing = Failure(fx.SFTPError(fx.FX_NO_SUCH_FILE, "No such file"))
    assert start_failure_message(missing, b"/srv") == "remote directory /srv does not exist"


def test_a_lost_session_is_replaced_on_the_next_request():
    clock = task.Clock()
    sessions = []

    def connect():
        client, transport = connected_client(clock)
        sessions.append((client, transport))
        return defer.succeed(client)

    link = SFTPLink(clock, connect)
    link.call(lambda c: c.getAttrs(b"/", 0)).addErrback(lambda _: None)
    first, _ = sessions[0]
    pending = link.call(lambda c: c.getAttrs(b"/a", 0))
    from twisted.internet import error
    from twisted.python.failure import Failure

    first.connectionLost(Failure(error.ConnectionLost()))
    assert isinstance(pending.result.value, LinkDown)
    pending.addErrback(lambda _: None)
    link.call(lambda c: c.getAttrs(b"/", 0)).addErrback(lambda _: None)
    assert len(sessions) == 2 and link.generation == 2


# -- read-ahead and write-behind ----------------------------------------------------------

class FakeHandle:
    def __init__(self, size):
        self.data = bytearray(bytes(range(256)) * (size // 256 + 1))[:size]
        self.reads, self.writes = [], []

    def readChunk(self, offset, length):
        d = defer.Deferred()
        self.reads.append((offset, length, d))
        return d

    def writeChunk(self, offset, data):
        d = defer.Deferred()
        self.writes.append((offset, data, d))
        return d

    def answer_reads(self):
        while self.reads:
            offset, length, d = self.reads.pop(0)
            if offset >= len(self.data):
                d.errback(EOFError())
            else:
                d.callback(bytes(self.data[offset:offset + length]))


class FakeLink:
    generation, connected = 1, True

    def call(self, request):
        return request(None)

    def corked(self):
        import contextlib

        return contextlib.nullcontext()


class FakeFS:
    link = FakeLink()


def test_sequential_reads_are_pipelined_ahead():
    handle = FakeHandle(40 * CHUNK)
    f = RemoteFile(FakeFS(), b"/f", fx.FXF_READ, handle, 1)
    first = f.read(0, 2 * CHUNK)
    # the two chunks asked for and READ_AHEAD more are all in flight at once
    assert len(handle.reads) == 2 + READ_AHEAD
    handle.answer_reads()
    assert first.result == bytes(handle.data[:2 * CHUNK])
    second = f.read(2 * CHUNK, 2 * CHUNK)
    assert second.called and second.result == bytes(handle.data[2 * CHUNK:4 * CHUNK])  # already here
    assert handle.reads == []  # plenty is still ahead: nothing asked yet
    offset = 4 * CHUNK
    while not handle.reads:  # read on until half the window is used up...
        got = f.read(offset, CHUNK)
        assert got.called and got.result == bytes(handle.data[offset:offset + CHUNK])
        offset += CHUNK
    # ... then one batch tops it up (and the chunk being read was already here)
    assert len(handle.reads) > READ_AHEAD // 2
    assert all(o >= (2 + READ_AHEAD) * CHUNK for o, _, _ in handle.reads)  # only chunks not asked before


def test_reads_at_random_offsets_and_past_the_end():
    handle = FakeHandle(3 * CHUNK + 100)
    f = RemoteFile(FakeFS(), b"/f", fx.FXF_READ, handle, 1)
    d = f.read(CHUNK - 10, 50)
    assert len(handle.reads) == 2  # no read-ahead for a jump
    handle.answer_reads()
    assert d.result == bytes(handle.data[CHUNK - 10:CHUNK + 40])
    d = f.read(3 * CHUNK + 50, CHUNK)
    handle.answer_reads()
    assert d.result == bytes(handle.data[3 * CHUNK + 50:])
    d = f.read(10 * CHUNK, 10)
    handle.answer_reads()
    assert d.result == b""


def test_writes_do_not_wait_and_the_first_error_is_reported_once():
    handle = FakeHandle(0)
    f = RemoteFile(FakeFS(), b"/f", fx.FXF_WRITE, handle, 1)
    acks = [f.write(i * 131072, b"x" * 131072) for i in range(4)]
    assert all(a.called for a in acks) and len(handle.writes) == 4  # pipelined
    handle.writes[1][2].errback(fx.SFTPError(fx.FX_FAILURE, "No space left on device"))
    for _, _, d in handle.writes[::2]:
        d.callback(None)
    handle.writes[3][2].callback(None)
    later = f.write(0, b"y")
    assert isinstance(later.result.value, fx.SFTPError)
    later.addErrback(lambda _: None)
    assert len(handle.writes) == 4  # the failing write was refused, not sent
    done = f.flush()
    assert done.called and done.result is None  # reported once, not twice


def test_writes_beyond_the_window_wait():
    handle = FakeHandle(0)
    f = RemoteFile(FakeFS(), b"/f", fx.FXF_WRITE, handle, 1)
    piece = b"z" * 131072
    acks = [f.write(i * len(piece), piece) for i in range(WRITE_WINDOW // len(piece) + 1)]
    assert not acks[-1].called  # back-pressure: the kernel waits
    flushed = f.flush()
    assert not flushed.called
    for _, _, d in list(handle.writes):
        d.callback(None)
    assert acks[-1].called and flushed.called


def test_writes_from_a_fuse_thread_are_handed_over_within_the_window_only():
    """A FUSE thread's write goes to the reactor without waiting while the
    window has room; past it, or with an error waiting to be reported, the
    caller is told to take the waiting path (where the error is raised)."""
    from skypty.fs.files import WRITE_WINDOW

    class Reactor:
        def __init__(self):
            self.calls = []

        def callFromThread(self, f, *args):
            self.calls.append((f, args))

        def run(self):
            calls, self.calls = self.calls, []
            for f, args in calls:
                f(*args)

    reactor, handle = Reactor(), FakeHandle(0)
    f = RemoteFile(FakeFS(), b"/f", fx.FXF_WRITE, handle, 1)
    piece = b"x" * 131072
    handed = 0
    while f.write_from_thread(reactor, handed * len(piece), piece):
        handed += 1
    assert handed == WRITE_WINDOW // len(piece)  # queued bytes count against the window
    assert f.pending_writes and handle.writes == []  # nothing sent before the reactor runs
    reactor.run()
    assert [offset for offset, _, _ in handle.writes] == [i * len(piece) for i in range(handed)]
    handle.writes[0][2].errback(fx.SFTPError(fx.FX_FAILURE, "No space left on device"))
    assert not f.write_from_thread(reactor, 0, b"y")  # the error is reported by the waiting path
    later = f.write(0, b"y")
    assert isinstance(later.result.value, fx.SFTPError)
    later.addErrback(lambda _: None)


def test_reads_already_here_are_answered_without_the_reactor():
    handle = FakeHandle(3 * CHUNK + 100)
    f = RemoteFile(FakeFS(), b"/f", fx.FXF_READ, handle, 1)
    assert f.read_ready(0, CHUNK) is None  # nothing asked yet
    f.read(0, CHUNK)
    assert f.read_ready(CHUNK - 10, 20) is None  # asked, not arrived
    handle.answer_reads()
    assert f.read_ready(CHUNK - 10, 20) == bytes(handle.data[CHUNK - 10:CHUNK + 10])  # across chunks
    assert f.read_ready(3 * CHUNK + 50, CHUNK) == bytes(handle.data[3 * CHUNK + 50:])  # up to the end
    handle.answer_reads()  # the EOF answer past the last chunk
    assert f.read_ready(4 * CHUNK, CHUNK) == b""


def test_a_full_window_needs_no_reactor_round():
    handle = FakeHandle(40 * CHUNK)
    f = RemoteFile(FakeFS(), b"/f", fx.FXF_READ, handle, 1)
    f.read(0, CHUNK)  # asks for chunk 0 and READ_AHEAD more
    handle.answer_reads()
    assert f.read_ready(CHUNK, CHUNK) is not None and f.window_full(CHUNK, CHUNK)
    assert not f.window_full(5 * CHUNK, CHUNK)  # not the next sequential read
    offset = 2 * CHUNK
    while f.window_full(offset, CHUNK):
        offset += CHUNK
    assert offset == (READ_AHEAD - READ_AHEAD // 2 + 1) * CHUNK  # half the window left: time to top up


def test_write_requests_are_byte_for_byte_what_conch_would_send():
    from twisted.conch.ssh.filetransfer import ClientFile
    from twisted.internet.testing import StringTransport

    from skypty.fs.link import SFTPClientProtocol, _ClientFile

    def sent(file_class):
        client = SFTPClientProtocol()
        transport = StringTransport()
        client.makeConnection(transport)
        transport.clear()
        client.counter = 7
        file_class(client, b"handle-1").writeChunk(2**40 + 3, b"data" * 1000)
        return transport.value()

    assert sent(_ClientFile) == sent(ClientFile)

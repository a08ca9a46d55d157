"""hashicorp/yamux, as dmsg runs it over a session's TCP connection.

Header: version u8 (0) | type u8 | flags u16 | stream id u32 | length u32,
big endian.  Types: data, window update, ping, go away; flags SYN, ACK, FIN,
RST.  Streams open with a window update carrying SYN (client ids odd from 1,
server ids even from 2) and are accepted with ACK; every stream starts with a
256 KiB receive window, re-granted as the application consumes data, so a
reader that stops reading stops the sender.

``YamuxSession`` is the pure state machine; ``YamuxProtocol`` and
``YamuxStream`` are the Twisted glue (a stream is an ITransport).
"""

import struct

from skypty.errors import ProtocolError

VERSION = 0
DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8
GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR, GO_AWAY_INTERNAL_ERROR = 0, 1, 2
INITIAL_WINDOW = 256 * 1024
# A stream we open may grant its peer more than the initial window (a window
# update with SYN, as hashicorp/yamux does for MaxStreamWindowSize): 256 KiB
# per round trip caps a 200 ms path at 1.3 MB/s.  Only streams we open (our
# own dials: a shell's output comes back on them), so what a stranger's
# streams can make us hold stays at INITIAL_WINDOW each.
MAX_WINDOW = 4 * 1024 * 1024
HEADER = struct.Struct(">BBHII")
HEADER_SIZE = HEADER.size
MAX_STREAMS = 4096
KEEPALIVE_INTERVAL = 30.0
KEEPALIVE_TIMEOUT = 30.0  # a ping unanswered this long, with nothing else heard either: dead


class YamuxError(ProtocolError):
    pass


def header(kind, flags, stream_id, length):
    return HEADER.pack(VERSION, kind, flags, stream_id, length)


class StreamState:
    __slots__ = ("id", "send_window", "recv_window", "window", "unacked", "local_closed", "remote_closed",
                 "reset", "outbox", "outbox_size", "established", "fin_sent")

    def __init__(self, stream_id, window=INITIAL_WINDOW):
        self.id = stream_id
        self.send_window = INITIAL_WINDOW   # what the peer still lets us send
        self.recv_window = window           # what we still let the peer send
        self.window = window                # what we grant in all (re-granted as consumed)
        self.unacked = 0                    # consumed, not yet re-granted
        self.local_closed = self.remote_closed = self.reset = False
        self.outbox = []
        self.outbox_size = 0
        self.established = False
        self.fin_sent = False               # our FIN goes out exactly once


class YamuxSession:
    """The state machine of one yamux session.

    *send(bytes)* writes to the connection.  *events* receives calls:
    ``stream_opened(id)``, ``stream_data(id, bytes)``, ``stream_closed(id)``
    (peer FIN), ``stream_reset(id)``, ``stream_writable(id)``, ``pong(value)``,
    ``go_away(code)``.
    """

    def __init__(self, client, send, events, max_streams=MAX_STREAMS):
        self.client = client
        self.send = send
        self.events = events
        self.max_streams = max_streams
        self.streams = {}
        self._next_id = 1 if client else 2
        self._buf = bytearray()
        self.closed = False
        self.remote_go_away = False

    # -- opening and writing ----------------------------------------------------------
    def open_stream(self, window=INITIAL_WINDOW):
        """-> a new stream id; *window*: what we let the peer send us ahead (up to MAX_WINDOW)."""
        window = max(INITIAL_WINDOW, min(int(window), MAX_WINDOW))
        if self.closed or self.remote_go_away:
            raise YamuxError("yamux session is closing")
        if len(self.streams) >= self.max_streams:
            raise YamuxError("too many yamux streams")
        sid = self._next_id
        self._next_id += 2
        self.streams[sid] = StreamState(sid, window)
        self.send(header(WINDOW_UPDATE, SYN, sid, window - INITIAL_WINDOW))
        return sid

    def write(self, sid, data):
        """Queue *data*; sends what the peer's window allows.  -> bytes still queued."""
        st = self.streams.get(sid)
        if st is None or st.local_closed or st.reset:
            return 0
        if data:
            st.outbox.append(bytes(data))
            st.outbox_size += len(data)
        self._flush(st)
        return st.outbox_size

    def _flush(self, st):
        frames = []
        while st.outbox and st.send_window > 0:
            chunk = st.outbox[0]
            n = min(len(chunk), st.send_window)
            if n < len(chunk):
                st.outbox[0] = chunk[n:]
                chunk = chunk[:n]
            else:
                st.outbox.pop(0)
            st.outbox_size -= n
            st.send_window -= n
            frames.append(header(DATA, 0, st.id, n))
            frames.append(chunk)
        if frames:
            self.send(b"".join(frames))

    def queued(self, sid):
        st = self.streams.get(sid)
        return st.outbox_size if st else 0

    def close_stream(self, sid):
        """Half-close our side (FIN) once queued data is out."""
        st = self.streams.get(sid)
        if st is None or st.local_closed or st.reset:
            return
        st.local_closed = True
        if st.outbox:
            return  # FIN goes out when the outbox drains
        self._send_fin(st)
        self._maybe_forget(st)

    def _send_fin(self, st):
        # hashicorp/yamux answers a second FIN with a protocol error that ends
        # the whole session: send it once.
        if not st.fin_sent:
            st.fin_sent = True
            self.send(header(WINDOW_UPDATE, FIN, st.id, 0))

    def reset_stream(self, sid):
        st = self.streams.pop(sid, None)
        if st is not None and not st.reset:
            st.reset = True
            self.send(header(WINDOW_UPDATE, RST, sid, 0))

    def consumed(self, sid, n):
        """The application took *n* bytes: re-grant them once enough have piled up."""
        st = self.streams.get(sid)
        if st is None:
            return
        st.unacked += n
        if st.unacked >= st.window // 2 and not st.remote_closed:
            delta, st.unacked = st.unacked, 0
            st.recv_window += delta
            self.send(header(WINDOW_UPDATE, 0, sid, delta))

    def ping(self, value):
        self.send(header(PING, SYN, 0, value))

    def go_away(self, code=GO_AWAY_NORMAL):
        if not self.closed:
            self.closed = True
            self.send(header(GO_AWAY, 0, 0, code))

    def _maybe_forget(self, st):
        if st.local_closed and st.remote_closed and not st.outbox:
            self.streams.pop(st.id, None)

    # -- receiving --------------------------------------------------------------------------
    def receive(self, data):
        buf = self._buf
        buf += data
        pos = 0
        try:
            while len(buf) - pos >= HEADER_SIZE:
                version, kind, flags, sid, length = HEADER.unpack_from(buf, pos)
                if version != VERSION:
                    raise YamuxError(f"yamux: bad version {version}")
                if kind == DATA:
                    st = self.streams.get(sid)
                    if length > (st.window if st is not None else INITIAL_WINDOW):
                        raise YamuxError("yamux: data frame larger than any window")
                    if len(buf) - pos < HEADER_SIZE + length:
                        break
                    body = bytes(buf[pos + HEADER_SIZE:pos + HEADER_SIZE + length])
                    pos += HEADER_SIZE + length
                    self._data(flags, sid, body)
                elif kind == WINDOW_UPDATE:
                    pos += HEADER_SIZE
                    self._window(flags, sid, length)
                elif kind == PING:
                    pos += HEADER_SIZE
                    if flags & SYN:
                        self.send(header(PING, ACK, 0, length))
                    elif flags & ACK:
                        self.events.pong(length)
                elif kind == GO_AWAY:
                    pos += HEADER_SIZE
                    self.remote_go_away = True
                    self.events.go_away(length)
                else:
                    raise YamuxError(f"yamux: bad frame type {kind}")
        finally:
            del buf[:pos]

    def _flags(self, flags, sid):
        """Handle SYN/ACK/FIN/RST; -> the stream state, or None to ignore the frame."""
        if flags & SYN:
            if sid == 0 or (sid % 2 == 1) == self.client:
                raise YamuxError(f"yamux: peer opened stream {sid} with our parity")
            if sid in self.streams:
                raise YamuxError(f"yamux: duplicate stream {sid}")
            if self.closed or self.remote_go_away or len(self.streams) >= self.max_streams:
                self.send(header(WINDOW_UPDATE, RST, sid, 0))
                return None
            st = self.streams[sid] = StreamState(sid)
            st.established = True
            self.send(header(WINDOW_UPDATE, ACK, sid, 0))
            self.events.stream_opened(sid)
        st = self.streams.get(sid)
        if st is None:
            return None  # a stream we already forgot: hashicorp drops such frames too
        if flags & ACK:
            st.established = True
        if flags & RST:
            self.streams.pop(sid, None)
            st.reset = True
            self.events.stream_reset(sid)
            return None
        return st

    def _data(self, flags, sid, body):
        st = self._flags(flags, sid)
        if st is None:
            return
        if body:
            if st.remote_closed:
                raise YamuxError("yamux: data after FIN")
            if len(body) > st.recv_window:
                raise YamuxError("yamux: peer overran the receive window")
            st.recv_window -= len(body)
            self.events.stream_data(sid, body)
        if flags & FIN:
            self._remote_fin(st)

    def _window(self, flags, sid, delta):
        st = self._flags(flags, sid)
        if st is None:
            return
        if delta:
            st.send_window += delta
            if st.send_window > 1 << 31:
                raise YamuxError("yamux: window overflow")
            had = st.outbox_size
            self._flush(st)
            if st.local_closed and not st.outbox:
                self._send_fin(st)
                self._maybe_forget(st)
            if had:
                self.events.stream_writable(sid)
        if flags & FIN:
            self._remote_fin(st)

    def _remote_fin(self, st):
        if not st.remote_closed:
            st.remote_closed = True
            self.events.stream_closed(st.id)
            self._maybe_forget(st)


# -- Twisted glue ---------------------------------------------------------------------------

from twisted.internet import defer, error, interfaces, protocol  # noqa: E402
from twisted.logger import Logger  # noqa: E402
from twisted.python import failure  # noqa: E402
from zope.interface import implementer  # noqa: E402

HIGH_WATER = 1024 * 1024


@implementer(interfaces.ITransport, interfaces.IPushProducer, interfaces.IConsumer)
class YamuxStream:
    """One yamux stream as a Twisted transport."""

    def __init__(self, session_protocol, stream_id):
        self.session = session_protocol
        self.stream_id = stream_id
        self.protocol = None
        self.producer = None
        self._producer_paused = False
        self.paused = False
        self._held = []          # data that arrived while paused (bounded by the window)
        self.disconnecting = False
        self.disconnected = False
        self._remote_closed = False

    # ITransport
    def write(self, data):
        if self.disconnected or self.disconnecting:
            return
        queued = self.session.core.write(self.stream_id, data)
        if queued > HIGH_WATER and self.producer is not None and not self._producer_paused:
            self._producer_paused = True
            self.producer.pauseProducing()

    def writeSequence(self, seq):
        self.write(b"".join(seq))

    def loseConnection(self):
        if not self.disconnecting and not self.disconnected:
            self.disconnecting = True
            self.session.core.close_stream(self.stream_id)
            self.session._after_local_close(self)

    def abortConnection(self):
        if not self.disconnected:
            self.session.core.reset_stream(self.stream_id)
            self.session._stream_gone(self.stream_id, error.ConnectionAborted())

    def getPeer(self):
        return self.session.transport.getPeer()

    def getHost(self):
        return self.session.transport.getHost()

    def getPeerPK(self):
        return getattr(self, "peer_pk", None)

    # IPushProducer: the application pausing us stops our window updates.
    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        held, self._held = self._held, []
        for data in held:
            if self.disconnected:
                return
            self._deliver(data)
        if self._remote_closed and not self._held:
            self._finish_if_done()

    def stopProducing(self):
        self.abortConnection()

    # IConsumer
    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def _deliver(self, data):
        if self.paused:
            self._held.append(data)
            return
        if self.session._guard(self, self.protocol.dataReceived, data):
            self.session.core.consumed(self.stream_id, len(data))

    def _writable(self):
        if self._producer_paused and self.session.core.queued(self.stream_id) < HIGH_WATER // 2:
            self._producer_paused = False
            if self.producer is not None:
                self.producer.resumeProducing()

    def _finish_if_done(self):
        """The peer sent FIN and everything it sent has been delivered."""
        if self.disconnected or not self._remote_closed:
            return
        if self.disconnecting:
            self.session._stream_gone(self.stream_id, error.ConnectionDone())
        elif interfaces.IHalfCloseableProtocol.providedBy(self.protocol):
            self.session._guard(self, self.protocol.readConnectionLost)
        else:
            # A protocol that cannot half-close: the peer's FIN ends the stream.
            self.session.core.close_stream(self.stream_id)
            self.session._stream_gone(self.stream_id, error.ConnectionDone())


class YamuxProtocol(protocol.Protocol):
    """A yamux session over one connection.

    *accept_stream(stream) -> Protocol or None* is called for streams the peer
    opens (None resets the stream)."""

    log = Logger()

    def __init__(self, client, accept_stream=None, reactor=None, keepalive=KEEPALIVE_INTERVAL,
                 dead_after=KEEPALIVE_TIMEOUT):
        """*keepalive*: seconds between pings (0: none).  *dead_after*: how
        long the peer may be silent (no pong, no byte at all) before the
        session is closed; a session that carries shells is given as long as
        its TCP is (netopts.SHELL_KEEPALIVE), so an outage of minutes does
        not end them."""
        if reactor is None:
            from twisted.internet import reactor
        self.client = client
        self.accept_stream = accept_stream
        self.reactor = reactor
        self.keepalive = keepalive
        self.dead_after = dead_after
        self.streams = {}
        self.core = None
        self._ping_call = self._pong_timeout = None
        self._probe_call = None
        self._ping_id = 0
        self.last_heard = self.reactor.seconds()
        self.closed = defer.Deferred()

    def connectionMade(self):
        self.core = YamuxSession(self.client, self.transport.write, self)
        if self.keepalive:
            self._ping_call = self.reactor.callLater(self.keepalive, self._send_ping)

    def _send_ping(self):
        self._ping_id = (self._ping_id + 1) & 0xFFFFFFFF
        self.core.ping(self._ping_id)
        if self._pong_timeout is None or not self._pong_timeout.active():
            self._pong_timeout = self.reactor.callLater(KEEPALIVE_TIMEOUT, self._keepalive_failed)
        self._ping_call = self.reactor.callLater(self.keepalive, self._send_ping)

    def probe(self, timeout):
        """Ping now; if not a byte comes back within *timeout* seconds the
        session is dead (its path died: a laptop changed networks) and is
        closed, so its streams fail now and a new session can be made,
        instead of after the keepalive's 30 + 30 s.  For a caller about to
        rely on this session (a dial)."""
        if self._probe_call is not None and self._probe_call.active() or self.core is None:
            return
        sent = self.reactor.seconds()
        self._ping_id = (self._ping_id + 1) & 0xFFFFFFFF
        self.core.ping(self._ping_id)

        def check():
            self._probe_call = None
            if self.last_heard < sent and self.transport is not None:
                self.log.warn("yamux peer silent for {t:.0f}s after a ping; closing the session", t=timeout)
                self.transport.abortConnection()

        self._probe_call = self.reactor.callLater(timeout, check)

    def _keepalive_failed(self):
        self._pong_timeout = None
        silent = self.reactor.seconds() - self.last_heard
        if silent < self.dead_after:  # quiet, not yet dead: look again when it would be
            self._pong_timeout = self.reactor.callLater(self.dead_after - silent, self._keepalive_failed)
            return
        self.log.warn("yamux peer silent for {t:.0f}s; closing the session", t=silent)
        self.transport.abortConnection()

    def pong(self, value):
        if self._pong_timeout is not None and self._pong_timeout.active():
            self._pong_timeout.cancel()
        self._pong_timeout = None

    def go_away(self, code):
        self.log.info("yamux peer going away (code {code})", code=code)

    def open_stream(self, proto, window=INITIAL_WINDOW):
        """Open a stream and connect *proto* to it at once (it may write right away)."""
        try:
            sid = self.core.open_stream(window)
        except YamuxError as e:
            return defer.fail(e)
        stream = YamuxStream(self, sid)
        self.streams[sid] = stream
        stream.protocol = proto
        proto.makeConnection(stream)
        return defer.succeed(proto)

    def _guard(self, stream, call, *args):
        """Run one stream's protocol callback.  A fault there (a bug, or a
        hostile peer finding one) ends that stream only: it must never unwind
        through the core's parser and take the session and every other
        stream with it.  -> True if the callback returned normally."""
        try:
            call(*args)
            return True
        except Exception:
            self.log.failure("yamux stream {sid} handler failed; resetting that stream only",
                             sid=stream.stream_id)
            if not stream.disconnected:
                stream.abortConnection()
            return False

    # events from the core
    def stream_opened(self, sid):
        stream = YamuxStream(self, sid)
        try:
            proto = self.accept_stream(stream) if self.accept_stream else None
        except Exception:
            self.log.failure("yamux stream {sid}: accepting it failed", sid=sid)
            proto = None
        if proto is None:
            self.core.reset_stream(sid)
            return
        self.streams[sid] = stream
        stream.protocol = proto
        self._guard(stream, proto.makeConnection, stream)

    def stream_data(self, sid, data):
        stream = self.streams.get(sid)
        if stream is not None and not stream.disconnected:
            stream._deliver(data)

    def stream_closed(self, sid):
        stream = self.streams.get(sid)
        if stream is not None:
            stream._remote_closed = True
            if not stream._held:
                stream._finish_if_done()

    def stream_reset(self, sid):
        self._stream_gone(sid, error.ConnectionLost("stream reset by peer"))

    def stream_writable(self, sid):
        stream = self.streams.get(sid)
        if stream is not None:
            stream._writable()

    def _after_local_close(self, stream):
        if stream._remote_closed:
            self._stream_gone(stream.stream_id, error.ConnectionDone())

    def _stream_gone(self, sid, reason):
        stream = self.streams.pop(sid, None)
        if stream is not None and not stream.disconnected:
            stream.disconnected = True
            try:
                stream.protocol.connectionLost(failure.Failure(reason))
            except Exception:
                self.log.failure("yamux stream {sid}: connectionLost failed", sid=sid)

    def dataReceived(self, data):
        self.last_heard = self.reactor.seconds()
        try:
            self.core.receive(data)
        except YamuxError as e:
            self.log.warn("yamux protocol error from {peer}: {err}", peer=str(self.transport.getPeer()), err=e)
            self.core.go_away(GO_AWAY_PROTOCOL_ERROR)
            self.transport.abortConnection()

    def connectionLost(self, reason=protocol.connectionDone):
        for call in (self._ping_call, self._pong_timeout, self._probe_call):
            if call is not None and call.active():
                call.cancel()
        if self.core is not None:
            self.core.closed = True
        for sid in list(self.streams):
            self._stream_gone(sid, error.ConnectionLost("yamux session closed"))
        if not self.closed.called:
            self.closed.callback(None)

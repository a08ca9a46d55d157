"""A dmsg session: TCP, Noise XK, then hashicorp/yamux in clear text.

The XK cipher states do not wrap the connection: they encrypt only the
signed stream request/response objects ("envelopes") carried on yamux
streams.  Stream payloads are protected end to end by each stream's own KK
handshake (skypty.dmsg.stream).
"""

import hashlib
import struct

from twisted.internet import defer, protocol
from twisted.logger import Logger

from skypty.errors import ProtocolError
from skypty.wire.netopts import SHELL_KEEPALIVE, enable_keepalive, keepalive_timers, quick_retransmits
from skypty.wire.noise import (
    MAX_PLAINTEXT, TAG, HandshakeFramer, NoiseError, NoiseHandshake, frame_handshake, pump_handshake,
)
from skypty.wire import gob
from skypty.wire.yamux import YamuxProtocol

HANDSHAKE_TIMEOUT = 10.0
# A current reference server gives a stream request 5 s to arrive and be
# answered; skypty's server and clients hold their side to the same.
STREAM_HANDSHAKE_TIMEOUT = 5.0
SIG_LEN = 65
REPLAY_WINDOW = 4096
# The reference server (dmsg v1.3.28, session_common.go initServer) drops a
# session, without a word, when yamux bytes arrive in the same read as the
# last handshake message (ErrSessionHandshakeExtraBytes).  A client that
# opens a stream as soon as its session is up wrote both in one segment, so
# the initiator sends message 3 alone and becomes ready about one handshake
# round trip later (bounded): by then the server has read message 3.
SETTLE_MIN = 0.01
SETTLE_MAX = 0.25
# A session carries shells (a plain one dies with its stream), so it is kept
# through an outage as long as a Noise TCP connection is (netopts.SHELL_KEEPALIVE:
# 220 s): TCP keepalive and the yamux pings both wait that long.  A dial
# does not wait for that: it pings the session first (client.SESSION_PROBE_TIMEOUT).


def session_dead_after():
    idle, interval, count = keepalive_timers(SHELL_KEEPALIVE)
    return idle + interval * count


class DmsgError(ProtocolError):
    pass


class EnvelopeCipher:
    """Session-level envelope encryption; nonces are per session, not per stream.

    Envelopes of different streams may be read in another order than they
    were sealed, so the receiver accepts any nonce it has not seen within a
    sliding window (the reference accepts any unseen nonce; skypty still
    refuses replays)."""

    def __init__(self, encoder, decoder):
        self.encoder, self.decoder = encoder, decoder
        self._seen = set()
        self._highest = 0

    def seal(self, plaintext):
        return self.encoder.encrypt_one(plaintext)

    def open(self, frame):
        if len(frame) < 2 + 8 + TAG:
            raise DmsgError("dmsg envelope too short")
        (nonce,) = struct.unpack_from(">Q", frame, 2)
        if nonce in self._seen or nonce + REPLAY_WINDOW <= self._highest:
            raise DmsgError("dmsg envelope replayed")
        d = self.decoder
        d.nonce = nonce - 1  # FrameDecoder demands "greater than": we track replays ourselves
        plaintext = d.decrypt_one(frame)
        self._seen.add(nonce)
        self._highest = max(self._highest, nonce)
        if len(self._seen) > REPLAY_WINDOW:
            self._seen = {n for n in self._seen if n + REPLAY_WINDOW > self._highest}
        return plaintext


def sign_object(sk, value, gotype):
    """Signature (65) || gob (from a fresh encoder, as the reference does)."""
    raw = gob.Encoder().encode(value, gotype)
    return sk.sign(raw) + raw


def open_object(signed, gotype):
    """-> (value, signature, gob bytes); the caller verifies the signer."""
    if len(signed) <= SIG_LEN:
        raise DmsgError("signed object too short")
    sig, raw = signed[:SIG_LEN], signed[SIG_LEN:]
    dec = gob.Decoder(max_message=MAX_PLAINTEXT)
    dec.feed(raw)
    value = dec.next_value(gotype)
    if value is gob.NEED_MORE or dec.buffered:
        raise DmsgError("signed object is not one gob value")
    return value, sig, raw


def object_hash(signed):
    return hashlib.sha256(signed).digest()


class EnvelopeReader:
    """Reads one u16-framed envelope from a stream, then hands over the rest."""

    def __init__(self):
        self._buf = b""

    def feed(self, data):
        """-> (frame incl. prefix, leftover) or (None, b'')."""
        self._buf += data
        if len(self._buf) < 2:
            return None, b""
        (length,) = struct.unpack_from(">H", self._buf)
        if length > MAX_PLAINTEXT + 8 + TAG:
            raise DmsgError("dmsg envelope too long")
        if len(self._buf) < 2 + length:
            return None, b""
        frame, rest = self._buf[:2 + length], self._buf[2 + length:]
        self._buf = b""
        return frame, rest

    def take_object(self, data, cipher, gotype):
        """-> None until a whole envelope arrived, then
        (value, signed object, signature, gob bytes, leftover); the caller
        checks who signed it."""
        frame, rest = self.feed(data)
        if frame is None:
            return None
        signed = cipher.open(frame)
        value, sig, raw = open_object(signed, gotype)
        return value, signed, sig, raw, rest

    def take_stream_request(self, data, cipher):
        """-> None until whole, then (StreamRequest, signed object, leftover),
        checked by ``check_stream_request`` and its signature verified
        against its own source key (InvalidKey if not)."""
        from skypty.wire import types as T

        got = self.take_object(data, cipher, T.StreamRequest)
        if got is None:
            return None
        req, signed, sig, raw, rest = got
        check_stream_request(req)
        req.src_addr.pk.verify(raw, sig)
        return req, signed, rest


def _check_addr(addr, which):
    from skypty.keys import PublicKey
    from skypty.wire import types as T

    if not isinstance(addr, T.Addr.cls):
        raise DmsgError(f"stream request without a {which} address")
    if not isinstance(addr.pk, PublicKey) or addr.pk.is_null:
        raise DmsgError(f"stream request {which} address has no key")
    if not isinstance(addr.port, int) or isinstance(addr.port, bool) or not 0 < addr.port <= 0xFFFF:
        raise DmsgError(f"stream request {which} port is zero or out of range")


def check_stream_request(req):
    """The shape of a decoded StreamRequest, before anything trusts it: gob
    fills absent fields with zero values, so a hostile request can lack a
    key, a port or a timestamp.  Raises DmsgError (a protocol error)."""
    from skypty.wire import types as T

    if not isinstance(req, T.StreamRequest.cls):
        raise DmsgError("not a stream request")
    _check_addr(req.src_addr, "source")
    _check_addr(req.dst_addr, "destination")
    if not isinstance(req.timestamp, int) or req.timestamp <= 0:
        raise DmsgError("stream request without a timestamp")
    if not isinstance(req.noise_msg, (bytes, bytearray)):
        raise DmsgError("stream request noise message has the wrong type")


def nodelay(transport):
    """Small RPC messages must not wait for Nagle and delayed ACKs."""
    if hasattr(transport, "setTcpNoDelay"):
        try:
            transport.setTcpNoDelay(True)
        except OSError:
            pass


class DmsgSession(protocol.Protocol):
    """One session connection, either side.  After the XK handshake the
    connection is handed to yamux; ``ready`` fires with this object."""

    log = Logger()

    def __init__(self, initiator, local_sk, remote_pk, accept_stream, reactor, on_lost=None):
        self.is_peer = False  # a session between two dmsg servers (the mesh)
        self.handshake = NoiseHandshake("XK", initiator, local_sk, remote_pk)
        self.initiator = initiator
        self.accept_stream = accept_stream
        self.reactor = reactor
        self.on_lost = on_lost
        self._framer = HandshakeFramer()
        self.yamux = None
        self.cipher = None
        self.remote_pk = remote_pk
        self.ready = defer.Deferred()
        self._timeout = None
        self._settle = None
        self._first_sent = None

    def connectionMade(self):
        nodelay(self.transport)
        enable_keepalive(self.transport, timers=SHELL_KEEPALIVE)  # see session_dead_after
        quick_retransmits(self.transport)  # its shells' output resumes soon after an outage
        self._timeout = self.reactor.callLater(HANDSHAKE_TIMEOUT, self._timed_out)
        if self.initiator:
            self._first_sent = self.reactor.seconds()
            self.transport.write(frame_handshake(self.handshake.write_message()))

    def _timed_out(self):
        self._timeout = None
        self.log.warn("dmsg session handshake timed out")
        self.transport.abortConnection()

    def dataReceived(self, data):
        if self.yamux is not None:
            self.yamux.dataReceived(data)
            return
        try:
            for reply in pump_handshake(self.handshake, self._framer, data):
                self.transport.write(reply)
            if not self.handshake.complete:
                return
        except NoiseError as e:
            self.log.warn("dmsg session handshake failed: {err}", err=e)
            self.transport.abortConnection()
            return
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self.remote_pk = self.handshake.remote_static
        self.cipher = EnvelopeCipher(*self.handshake.split())
        self.yamux = YamuxProtocol(self.initiator, accept_stream=lambda s: self.accept_stream(self, s),
                                   reactor=self.reactor, dead_after=session_dead_after())
        self.yamux.makeConnection(self.transport)
        rest = self._framer.take_rest()
        if self.initiator:  # message 3 goes out alone (see SETTLE_MIN)
            rtt = self.reactor.seconds() - self._first_sent
            self._settle = self.reactor.callLater(min(max(rtt, SETTLE_MIN), SETTLE_MAX), self._settled)
        else:
            self.ready.callback(self)
        if rest:
            self.yamux.dataReceived(rest)

    def _settled(self):
        self._settle = None
        self.ready.callback(self)

    def open_stream(self, proto, window=None):
        if window is None:
            return self.yamux.open_stream(proto)
        return self.yamux.open_stream(proto, window)

    def connectionLost(self, reason=protocol.connectionDone):
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        if self._settle is not None and self._settle.active():
            self._settle.cancel()
            self._settle = None
        if self.yamux is not None:
            self.yamux.connectionLost(reason)
        if not self.ready.called:
            self.ready.errback(reason)
            self.ready.addErrback(lambda _: None)
        if self.on_lost is not None:
            self.on_lost(self)

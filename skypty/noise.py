"""Noise XK / KK over secp256k1, as dmsg speaks it (sans-I/O, no Twisted).

Only what dmsg uses is here: the two patterns, empty prologue, empty
payloads, ChaCha20-Poly1305 and SHA-256, with DH = SHA256(compressed shared
point) padded with one 0x00 byte to 33 bytes.  After the handshake, data moves
in frames ``[u16 len][u64 nonce][ciphertext||tag]`` with explicit, strictly
increasing nonces starting at 1.  The side that writes the last handshake
message keeps the split cipher states swapped, as the reference does.
"""

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from skypty.errors import ProtocolError
from skypty.keys import InvalidKey, PublicKey, SecretKey

DHLEN = 33
TAG = 16
MAX_FRAME = 4096                       # whole frame, length prefix included
MAX_PLAINTEXT = MAX_FRAME - 2 - 8 - TAG  # 4070
# A current reference peer may put an ML-KEM-768 offer (1184 bytes) or
# ciphertext (1088) in a message's payload: read it, then ignore it.
MAX_HANDSHAKE_MESSAGE = 2048
PATTERNS = {
    # pre-messages (who knows whose static up front), then message tokens
    "XK": (("responder",), (("e", "es"), ("e", "ee"), ("s", "se"))),
    "KK": (("initiator", "responder"), (("e", "es", "ss"), ("e", "ee", "se"))),
}
_NONCE_PREFIX = b"\x00\x00\x00\x00"
_pack_header = struct.Struct(">HQ").pack
_unpack_header = struct.Struct(">HQ").unpack_from
_pack_le64 = struct.Struct("<Q").pack


class NoiseError(ProtocolError):
    pass


def protocol_name(pattern):
    return f"Noise_{pattern}_Secp256k1_ChaChaPoly_SHA256".encode()


def dh(sk, pk):
    """secp256k1 ECDH as the reference reports it: SHA256(point) || 0x00."""
    return sk.ecdh(pk) + b"\x00"


def _hkdf(ck, ikm, n):
    temp = hmac.new(ck, ikm, hashlib.sha256).digest()
    out1 = hmac.new(temp, b"\x01", hashlib.sha256).digest()
    if n == 2:
        return out1, hmac.new(temp, out1 + b"\x02", hashlib.sha256).digest()
    raise ValueError(n)


def _aead_nonce(n):
    return _NONCE_PREFIX + _pack_le64(n)


class _SymmetricState:
    def __init__(self, name):
        self.h = name if len(name) <= 32 else hashlib.sha256(name).digest()
        self.h = self.h.ljust(32, b"\x00")
        self.ck = self.h
        self.k = None
        self.n = 0

    def mix_hash(self, data):
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm):
        self.ck, k = _hkdf(self.ck, ikm, 2)
        self.k, self.n = k, 0

    def encrypt_and_hash(self, plaintext):
        if self.k is None:
            out = plaintext
        else:
            out = ChaCha20Poly1305(self.k).encrypt(_aead_nonce(self.n), plaintext, self.h)
            self.n += 1
        self.mix_hash(out)
        return out

    def decrypt_and_hash(self, data):
        if self.k is None:
            out = data
        else:
            try:
                out = ChaCha20Poly1305(self.k).decrypt(_aead_nonce(self.n), data, self.h)
            except InvalidTag:
                raise NoiseError("noise handshake message failed authentication") from None
            self.n += 1
        self.mix_hash(data)
        return out

    def split(self):
        return _hkdf(self.ck, b"", 2)


class NoiseHandshake:
    """One side of an XK or KK handshake.

    ``remote_static`` must be given for the pre-messages the pattern has (XK:
    the initiator knows the responder; KK: both know each other).  After
    ``complete``, ``remote_static`` is the peer's proven key and ``split()``
    gives the (encoder, decoder) pair for transport frames.
    """

    def __init__(self, pattern, initiator, local_static, remote_static=None, ephemeral=None):
        if pattern not in PATTERNS:
            raise ValueError(f"unsupported noise pattern {pattern!r}")
        premessages, self._messages = PATTERNS[pattern]
        self.pattern = pattern
        self.initiator = initiator
        self.s = local_static
        self.rs = remote_static
        self.e = ephemeral or SecretKey.generate()
        self.re = None
        self._index = 0
        self._sym = _SymmetricState(protocol_name(pattern))
        self._sym.mix_hash(b"")  # empty prologue
        for who in ("initiator", "responder"):
            if who in premessages:
                mine = (who == "initiator") == initiator
                if not mine and remote_static is None:
                    raise ValueError(f"{pattern} needs the {who}'s static public key up front")
                key = self.s.public_key if mine else self.rs
                self._sym.mix_hash(key.raw)

    @property
    def complete(self):
        return self._index >= len(self._messages)

    @property
    def handshake_hash(self):
        return self._sym.h

    @property
    def chaining_key(self):
        return self._sym.ck

    @property
    def remote_static(self):
        return self.rs

    def _my_turn(self):
        return (self._index % 2 == 0) == self.initiator

    def _dh_token(self, token):
        # "es": initiator's e with responder's s; "se": initiator's s with responder's e.
        first, second = token
        if self.initiator:
            local = self.e if first == "e" else self.s
            remote = self.re if second == "e" else self.rs
        else:
            local = self.e if second == "e" else self.s
            remote = self.re if first == "e" else self.rs
        self._sym.mix_key(dh(local, remote))

    def write_message(self, payload=b""):
        if self.complete or not self._my_turn():
            raise NoiseError("not this side's turn to write a handshake message")
        out = []
        for token in self._messages[self._index]:
            if token == "e":
                raw = self.e.public_key.raw
                self._sym.mix_hash(raw)
                out.append(raw)
            elif token == "s":
                out.append(self._sym.encrypt_and_hash(self.s.public_key.raw))
            else:
                self._dh_token(token)
        out.append(self._sym.encrypt_and_hash(payload))
        self._index += 1
        return b"".join(out)

    def read_message(self, message):
        if self.complete or self._my_turn():
            raise NoiseError("unexpected handshake message")
        if len(message) > MAX_HANDSHAKE_MESSAGE:
            raise NoiseError("handshake message too long")
        pos = 0
        for token in self._messages[self._index]:
            if token == "e":
                raw = message[pos:pos + DHLEN]
                pos += DHLEN
                self.re = self._public(raw)
                self._sym.mix_hash(raw)
            elif token == "s":
                size = DHLEN + (TAG if self._sym.k is not None else 0)
                raw = message[pos:pos + size]
                if len(raw) != size:
                    raise NoiseError("handshake message truncated")
                pos += size
                self.rs = self._public(self._sym.decrypt_and_hash(raw))
            else:
                self._dh_token(token)
        payload = self._sym.decrypt_and_hash(message[pos:]) if pos <= len(message) else b""
        self._index += 1
        return payload

    @staticmethod
    def _public(raw):
        try:
            pk = PublicKey(bytes(raw))
        except InvalidKey:
            raise NoiseError("handshake carries an invalid public key") from None
        if pk.is_null:
            raise NoiseError("handshake carries the null key")
        return pk

    def split(self):
        """-> (FrameEncoder, FrameDecoder), with the reference's state swap."""
        if not self.complete:
            raise NoiseError("handshake is not complete")
        k1, k2 = self._sym.split()
        wrote_last = (len(self._messages) % 2 == 1) == self.initiator
        if wrote_last:
            return FrameEncoder(k2), FrameDecoder(k1)
        return FrameEncoder(k1), FrameDecoder(k2)


class FrameEncoder:
    """Encrypts transport frames; one per direction."""

    def __init__(self, key):
        self._aead = ChaCha20Poly1305(key)
        self.nonce = 0

    def encrypt_one(self, data):
        """One frame for at most MAX_PLAINTEXT bytes (dmsg's session envelopes)."""
        if len(data) > MAX_PLAINTEXT:
            raise NoiseError(f"frame payload too large ({len(data)} > {MAX_PLAINTEXT})")
        self.nonce += 1
        ct = self._aead.encrypt(_NONCE_PREFIX + _pack_le64(self.nonce), bytes(data), None)
        return _pack_header(8 + len(ct), self.nonce) + ct

    def encrypt(self, data):
        """Any amount of data as one or more frames (b'' -> b'')."""
        if len(data) <= MAX_PLAINTEXT:
            return self.encrypt_one(data) if data else b""
        view = memoryview(data)
        return b"".join(self.encrypt_one(view[i:i + MAX_PLAINTEXT])
                        for i in range(0, len(view), MAX_PLAINTEXT))


class FrameDecoder:
    """Decrypts a byte stream of transport frames; buffers at most one frame."""

    def __init__(self, key):
        self._aead = ChaCha20Poly1305(key)
        self.nonce = 0
        self._buf = bytearray()

    @property
    def buffered(self):
        return len(self._buf)

    def decrypt_one(self, frame):
        """A whole frame, length prefix included -> plaintext."""
        if len(frame) < 2 + 8 + TAG:
            raise NoiseError("noise frame too short")
        length, nonce = _unpack_header(frame, 0)
        if length != len(frame) - 2:
            raise NoiseError("noise frame length mismatch")
        return self._open(nonce, frame[10:])

    def _open(self, nonce, ct):
        if nonce <= self.nonce:
            raise NoiseError(f"noise frame replayed or reordered (nonce {nonce} after {self.nonce})")
        try:
            plaintext = self._aead.decrypt(_NONCE_PREFIX + _pack_le64(nonce), bytes(ct), None)
        except InvalidTag:
            raise NoiseError("noise frame failed authentication") from None
        self.nonce = nonce
        return plaintext

    def receive(self, data):
        """Feed stream bytes; -> list of non-empty plaintexts."""
        buf = self._buf
        buf += data
        out = []
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            length = (buf[pos] << 8) | buf[pos + 1]
            if length < 8 + TAG or length > MAX_FRAME - 2:
                raise NoiseError(f"bad noise frame length {length}")
            if n - pos < 2 + length:
                break
            nonce = struct.unpack_from(">Q", buf, pos + 2)[0]
            plaintext = self._open(nonce, memoryview(buf)[pos + 10:pos + 2 + length])
            if plaintext:
                out.append(plaintext)
            pos += 2 + length
        if pos:
            del buf[:pos]
        return out


def pump_handshake(handshake, framer, data):
    """Feed stream bytes to a handshake; -> the framed replies to send.  Bytes
    after the last handshake message stay in *framer* (``take_rest()``)."""
    framer.feed(data)
    replies = []
    while not handshake.complete:
        message = framer.next_message()
        if message is None:
            break
        handshake.read_message(message)
        if not handshake.complete:
            replies.append(frame_handshake(handshake.write_message()))
    return replies


def frame_handshake(message):
    if len(message) > 0xFFFF:
        raise NoiseError("handshake message too long")
    return struct.pack(">H", len(message)) + message


class HandshakeFramer:
    """Splits a stream into u16-length-prefixed handshake messages (bounded)."""

    def __init__(self, limit=MAX_HANDSHAKE_MESSAGE):
        self.limit = limit
        self._buf = bytearray()

    def feed(self, data):
        self._buf += data
        if len(self._buf) >= 2 and ((self._buf[0] << 8) | self._buf[1]) > self.limit:
            raise NoiseError("handshake message of {} bytes refused".format(
                (self._buf[0] << 8) | self._buf[1]))

    def next_message(self):
        """The next whole message, or None; bytes after it stay buffered."""
        if len(self._buf) < 2:
            return None
        length = (self._buf[0] << 8) | self._buf[1]
        if length > self.limit:
            raise NoiseError(f"handshake message of {length} bytes refused")
        if len(self._buf) < 2 + length:
            return None
        message = bytes(self._buf[2:2 + length])
        del self._buf[:2 + length]
        return message

    def take_rest(self):
        rest, self._buf = bytes(self._buf), bytearray()
        return rest

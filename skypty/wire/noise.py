"""Noise XK / KK over secp256k1, as dmsg speaks it (sans-I/O, no Twisted).

The handshakes run on the ``noiseprotocol`` package (its patterns, HKDF and
handshake state machine).  Its backend mechanism takes the functions: here
secp256k1 as the reference computes it (DH = SHA256(compressed shared point)
padded with one 0x00 byte to 33 bytes), ChaCha20-Poly1305 and SHA-256; empty
prologue and payloads.  Two things stay here by hand because the package
cannot express them: transport frames are
``[u16 len][u64 nonce][ciphertext||tag]`` with explicit, strictly increasing
nonces starting at 1 (the package counts nonces implicitly), and the side that
writes the last handshake message keeps the split cipher states swapped, as
the reference does.
"""

import hashlib
import hmac
import struct
import warnings

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from noise import exceptions as library_errors
from noise.backends.noise_backend import NoiseBackend
from noise.functions.cipher import Cipher
from noise.functions.dh import DH
from noise.functions.hash import Hash
from noise.functions.keypair import KeyPair
from noise.noise_protocol import NoiseProtocol

from skypty.errors import ProtocolError
from skypty.keys import InvalidKey, PublicKey, SecretKey

DHLEN = 33
TAG = 16
MAX_FRAME = 4096                       # whole frame, length prefix included
MAX_PLAINTEXT = MAX_FRAME - 2 - 8 - TAG  # 4070
# A current reference peer may put an ML-KEM-768 offer (1184 bytes) or
# ciphertext (1088) in a message's payload: read it, then ignore it.
MAX_HANDSHAKE_MESSAGE = 2048
# messages per pattern; the pattern tokens themselves are the package's
PATTERNS = {"XK": 3, "KK": 2}
_NONCE_PREFIX = b"\x00\x00\x00\x00"
_pack_header = struct.Struct(">HQ").pack
_unpack_header = struct.Struct(">HQ").unpack_from
_pack_le64 = struct.Struct("<Q").pack


def _aead_nonce(n):
    return _NONCE_PREFIX + _pack_le64(n)


class NoiseError(ProtocolError):
    pass


def protocol_name(pattern):
    return f"Noise_{pattern}_Secp256k1_ChaChaPoly_SHA256".encode()


def dh(sk, pk):
    """secp256k1 ECDH as the reference reports it: SHA256(point) || 0x00."""
    return sk.ecdh(pk) + b"\x00"


def _public(raw):
    try:
        pk = PublicKey(bytes(raw))
    except InvalidKey:
        raise NoiseError("handshake carries an invalid public key") from None
    if pk.is_null:
        raise NoiseError("handshake carries the null key")
    return pk


class Secp256k1KeyPair(KeyPair):
    """The package's key pair, holding skypty.keys objects."""

    @classmethod
    def of(cls, sk):
        return cls(private=sk, public=sk.public_key, public_bytes=sk.public_key.raw)

    @classmethod
    def from_private_bytes(cls, private_bytes):
        return cls.of(SecretKey(bytes(private_bytes)))

    @classmethod
    def from_public_bytes(cls, public_bytes):
        if len(public_bytes) != DHLEN:
            raise NoiseError("handshake message truncated")
        pk = _public(public_bytes)
        return cls(public=pk, public_bytes=pk.raw)


class Secp256k1(DH):
    klass = Secp256k1KeyPair
    dhlen = DHLEN

    def generate_keypair(self):
        return Secp256k1KeyPair.of(SecretKey.generate())

    def dh(self, private_key, public_key):
        return dh(private_key, public_key)


class ChaChaPoly(Cipher):
    klass = ChaCha20Poly1305

    def encrypt(self, k, n, ad, plaintext):
        return self.cipher.encrypt(_aead_nonce(n), plaintext, ad)

    def decrypt(self, k, n, ad, ciphertext):
        return self.cipher.decrypt(_aead_nonce(n), ciphertext, ad)


class SHA256(Hash):
    fn = hashlib.sha256
    hashlen = 32
    blocklen = 64

    def hash(self, data):
        return hashlib.sha256(data).digest()


def _hmac(key, data, algorithm):
    return hmac.new(key, data, algorithm).digest()


class _Backend(NoiseBackend):
    """The package's patterns, HKDF and handshake state machine, with exactly the
    functions dmsg uses.  (The package's default backend would do for the cipher
    and hash, but importing it pulls in all of cryptography's key serialization:
    ~14 ms more on every one-shot ``skypty-client exec``.)"""

    def __init__(self):
        super().__init__()
        self.diffie_hellmans = {"Secp256k1": Secp256k1}
        self.keypairs = {"Secp256k1": Secp256k1KeyPair}
        self.ciphers = {"ChaChaPoly": ChaChaPoly}
        self.hashes = {"SHA256": SHA256}
        self.hmac = _hmac


BACKEND = _Backend()
# What the package raises on a bad message (besides InvalidTag and our NoiseError).
_LIBRARY_ERRORS = (library_errors.NoiseValueError, library_errors.NoiseInvalidMessage,
                   library_errors.NoiseHandshakeError, library_errors.NoiseMaxNonceError, ValueError)


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
        if remote_static is None and (pattern == "KK" or initiator):
            who = "responder" if initiator else "initiator"
            raise ValueError(f"{pattern} needs the {who}'s static public key up front")
        self.pattern = pattern
        self.initiator = initiator
        self._messages = PATTERNS[pattern]
        self._index = 0
        self._keys = None
        # The package's NoiseProtocol, driven the way its NoiseConnection does (which
        # would import the default backend, see _Backend).
        protocol = NoiseProtocol(protocol_name(pattern), BACKEND)
        protocol.initiator = initiator
        protocol.keypairs["s"] = Secp256k1KeyPair.of(local_static)
        if remote_static is not None:
            protocol.keypairs["rs"] = Secp256k1KeyPair(public=remote_static, public_bytes=remote_static.raw)
        with warnings.catch_warnings():
            if ephemeral is not None:
                # Fixed ephemerals are for the reference vectors only; the package warns about them.
                warnings.simplefilter("ignore")
                protocol.keypairs["e"] = Secp256k1KeyPair.of(ephemeral)
            protocol.validate()
        protocol.initialise_handshake_state()
        self._protocol = protocol
        self._state = protocol.handshake_state
        # The package drops its symmetric state once split; h and ck stay readable here.
        self._sym = protocol.symmetric_state

    @property
    def complete(self):
        return self._index >= self._messages

    @property
    def handshake_hash(self):
        return self._sym.h

    @property
    def chaining_key(self):
        return self._sym.ck

    @property
    def remote_static(self):
        rs = getattr(self._state, "rs", None)
        return getattr(rs, "public", None)

    def _my_turn(self):
        return (self._index % 2 == 0) == self.initiator

    def write_message(self, payload=b""):
        if self.complete or not self._my_turn():
            raise NoiseError("not this side's turn to write a handshake message")
        message = bytearray()
        self._state.write_message(payload, message)
        self._advance()
        return bytes(message)

    def read_message(self, message):
        if self.complete or self._my_turn():
            raise NoiseError("unexpected handshake message")
        if len(message) > MAX_HANDSHAKE_MESSAGE:
            raise NoiseError("handshake message too long")
        payload = bytearray()
        try:
            self._state.read_message(bytes(message), payload)
        except InvalidTag:
            raise NoiseError("noise handshake message failed authentication") from None
        except _LIBRARY_ERRORS as e:
            raise NoiseError(f"bad noise handshake message: {e}") from None
        self._advance()
        return bytes(payload)

    def _advance(self):
        self._index += 1
        if self.complete:
            protocol = self._protocol
            encrypt, decrypt = protocol.cipher_state_encrypt.k, protocol.cipher_state_decrypt.k
            self._keys = (encrypt, decrypt) if self.initiator else (decrypt, encrypt)  # (k1, k2)

    def split(self):
        """-> (FrameEncoder, FrameDecoder), with the reference's state swap."""
        if not self.complete:
            raise NoiseError("handshake is not complete")
        k1, k2 = self._keys
        wrote_last = (self._messages % 2 == 1) == self.initiator
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

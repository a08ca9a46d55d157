"""secp256k1 identities: public keys, secret keys and recoverable signatures.

A skypty identity is a Skywire identity: a 33-byte compressed secp256k1
public key (66 hex chars) and its 32-byte secret scalar.  Signatures are
Skywire's 65-byte ``r || s || recovery-id`` over SHA-256 of the payload.
"""

import hashlib

import attr
import coincurve

from skypty.errors import SkyptyError

PK_LEN = 33
SK_LEN = 32
SIG_LEN = 65


class InvalidKey(SkyptyError, ValueError):
    """A key or signature that is malformed or does not verify."""


def _sha256(data):
    return hashlib.sha256(data).digest()


def _from_hex(text, length, what):
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    text = text.strip()
    if len(text) != 2 * length:
        raise InvalidKey(f"{what} must be {2 * length} hex characters, got {len(text)}")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise InvalidKey(f"{what} is not valid hex") from None


@attr.s(frozen=True, slots=True, repr=False, hash=True, eq=True, order=True)
class PublicKey:
    """A compressed secp256k1 point, or the null key (33 zero bytes)."""

    raw = attr.ib(type=bytes)

    @raw.validator
    def _check(self, _attribute, value):
        if not isinstance(value, bytes) or len(value) != PK_LEN:
            raise InvalidKey(f"public key must be {PK_LEN} bytes")
        if value != bytes(PK_LEN):
            try:
                coincurve.PublicKey(value)
            except Exception:
                raise InvalidKey("public key is not a point on secp256k1") from None

    @classmethod
    def from_hex(cls, text):
        return cls(_from_hex(text, PK_LEN, "public key"))

    @classmethod
    def null(cls):
        return cls(bytes(PK_LEN))

    @property
    def is_null(self):
        return self.raw == bytes(PK_LEN)

    def hex(self):
        return self.raw.hex()

    def __str__(self):
        return self.raw.hex()

    def __repr__(self):
        return f"PublicKey({self.raw.hex()})"

    def __bytes__(self):
        return self.raw

    def verify(self, data, signature):
        """Raise InvalidKey unless *signature* is this key's over SHA256(data)."""
        if self.is_null:
            raise InvalidKey("the null key cannot sign")
        if len(signature) != SIG_LEN:
            raise InvalidKey(f"signature must be {SIG_LEN} bytes, got {len(signature)}")
        try:
            recovered = coincurve.PublicKey.from_signature_and_message(
                bytes(signature), data, hasher=_sha256
            )
        except Exception:
            raise InvalidKey("signature is malformed") from None
        if recovered.format(compressed=True) != self.raw:
            raise InvalidKey("signature does not match the public key")


@attr.s(frozen=True, slots=True, repr=False, eq=True)
class SecretKey:
    """A secp256k1 secret scalar."""

    raw = attr.ib(type=bytes)
    _key = attr.ib(init=False, eq=False)

    def __attrs_post_init__(self):
        if not isinstance(self.raw, bytes) or len(self.raw) != SK_LEN:
            raise InvalidKey(f"secret key must be {SK_LEN} bytes")
        try:
            key = coincurve.PrivateKey(self.raw)
        except Exception:
            raise InvalidKey("secret key is out of range for secp256k1") from None
        object.__setattr__(self, "_key", key)

    @classmethod
    def generate(cls):
        return cls(coincurve.PrivateKey().secret)

    @classmethod
    def from_hex(cls, text):
        return cls(_from_hex(text, SK_LEN, "secret key"))

    def hex(self):
        return self.raw.hex()

    def __repr__(self):
        return "SecretKey(<hidden>)"

    @property
    def public_key(self):
        return PublicKey(self._key.public_key.format(compressed=True))

    def sign(self, data):
        """65-byte recoverable signature over SHA256(data)."""
        return self._key.sign_recoverable(data, hasher=_sha256)

    def ecdh(self, public_key):
        """libsecp256k1's default ECDH: SHA256 of the compressed shared point."""
        return self._key.ecdh(public_key.raw)


def generate_keypair():
    sk = SecretKey.generate()
    return sk.public_key, sk

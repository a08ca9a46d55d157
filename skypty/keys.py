"""secp256k1 identities: public keys, secret keys and recoverable signatures.

A skypty identity is a Skywire identity: a 33-byte compressed secp256k1
public key (66 hex chars) and its 32-byte secret scalar.  Signatures are
Skywire's 65-byte ``r || s || recovery-id`` over SHA-256 of the payload.
"""

from skypty.errors import SkyptyError

# coincurve is imported only where a key signs, verifies or derives: a
# one-shot client through the control socket parses keys but never needs it.

PK_LEN = 33
SK_LEN = 32
SIG_LEN = 65
# secp256k1: y^2 = x^3 + 7 over the field of P; N is the group order.
_P = 2**256 - 2**32 - 977
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class InvalidKey(SkyptyError, ValueError):
    """A key or signature that is malformed or does not verify."""


def _sha256(data):
    import hashlib  # loading OpenSSL costs a one-shot client ~2 ms it rarely needs

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


# Encodings already found on the curve: the check is ~0.3 ms of pure Python
# (one 256-bit modular exponentiation), and a host meets the same few keys
# (its own, its peers', the dmsg server's) several times per dmsg stream.
_ON_CURVE = set()
_ON_CURVE_MAX = 4096


def _on_curve(compressed):
    """Is this 33-byte compressed encoding a point on secp256k1?  (x^3 + 7 must
    be a square mod P; either parity of y then exists.)"""
    if compressed in _ON_CURVE:
        return True
    if compressed[0] not in (2, 3):
        return False
    x = int.from_bytes(compressed[1:], "big")
    if x >= _P:
        return False
    if pow((x * x * x + 7) % _P, (_P - 1) // 2, _P) != 1:
        return False
    if len(_ON_CURVE) >= _ON_CURVE_MAX:
        _ON_CURVE.clear()
    _ON_CURVE.add(compressed)
    return True


class _Frozen:
    __slots__ = ()

    def __setattr__(self, name, value):
        raise AttributeError(f"{self.__class__.__name__} is immutable")


class PublicKey(_Frozen):
    """A compressed secp256k1 point, or the null key (33 zero bytes)."""

    __slots__ = ("raw",)

    def __init__(self, raw):
        if not isinstance(raw, bytes) or len(raw) != PK_LEN:
            raise InvalidKey(f"public key must be {PK_LEN} bytes")
        if raw != bytes(PK_LEN) and not _on_curve(raw):
            raise InvalidKey("public key is not a point on secp256k1")
        object.__setattr__(self, "raw", raw)

    def __eq__(self, other):
        return self.raw == other.raw if other.__class__ is PublicKey else NotImplemented

    def __lt__(self, other):
        return self.raw < other.raw

    def __le__(self, other):
        return self.raw <= other.raw

    def __gt__(self, other):
        return self.raw > other.raw

    def __ge__(self, other):
        return self.raw >= other.raw

    def __hash__(self):
        return hash(self.raw)

    def __reduce__(self):
        return PublicKey, (self.raw,)

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
        import coincurve

        try:
            recovered = coincurve.PublicKey.from_signature_and_message(
                bytes(signature), data, hasher=_sha256
            )
        except Exception:
            raise InvalidKey("signature is malformed") from None
        if recovered.format(compressed=True) != self.raw:
            raise InvalidKey("signature does not match the public key")


class SecretKey(_Frozen):
    """A secp256k1 secret scalar."""

    __slots__ = ("raw", "_key")

    def __init__(self, raw):
        if not isinstance(raw, bytes) or len(raw) != SK_LEN:
            raise InvalidKey(f"secret key must be {SK_LEN} bytes")
        if not 0 < int.from_bytes(raw, "big") < _N:
            raise InvalidKey("secret key is out of range for secp256k1")
        object.__setattr__(self, "raw", raw)
        object.__setattr__(self, "_key", None)

    @property
    def _private(self):
        if self._key is None:
            import coincurve

            object.__setattr__(self, "_key", coincurve.PrivateKey(self.raw))
        return self._key

    def __eq__(self, other):
        return self.raw == other.raw if other.__class__ is SecretKey else NotImplemented

    def __hash__(self):
        return hash(self.raw)

    def __reduce__(self):
        return SecretKey, (self.raw,)

    @classmethod
    def generate(cls):
        import coincurve

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
        # Derived from a valid scalar, so on the curve: no check (a fresh
        # ephemeral key per dmsg stream would miss the cache every time).
        pk = object.__new__(PublicKey)
        object.__setattr__(pk, "raw", self._private.public_key.format(compressed=True))
        return pk

    def sign(self, data):
        """65-byte recoverable signature over SHA256(data)."""
        return self._private.sign_recoverable(data, hasher=_sha256)

    def ecdh(self, public_key):
        """libsecp256k1's default ECDH: SHA256 of the compressed shared point."""
        return self._private.ecdh(public_key.raw)


def generate_keypair():
    sk = SecretKey.generate()
    return sk.public_key, sk

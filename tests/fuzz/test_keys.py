"""Fuzz: public key parsing, which every handshake, gob PubKey and discovery
entry goes through: it must accept exactly what libsecp256k1 accepts."""

import coincurve
from hypothesis import example, given, strategies as st

from skypty.keys import PK_LEN, InvalidKey, PublicKey
from tests.fuzz import fuzz, only

P = 2**256 - 2**32 - 977


def libsecp256k1_accepts(raw):
    try:
        coincurve.PublicKey(raw)
        return True
    except Exception:
        return False


@fuzz(300)
@given(st.one_of(
    st.tuples(st.sampled_from([2, 3]), st.integers(0, 2**256 - 1)).map(
        lambda t: bytes((t[0],)) + t[1].to_bytes(32, "big")),
    st.binary(min_size=PK_LEN, max_size=PK_LEN),
    st.binary(max_size=70)))
@example(b"\x02" + (P - 1).to_bytes(32, "big"))
@example(b"\x02" + P.to_bytes(32, "big"))   # x = P: not a field element
@example(bytes(PK_LEN))                      # the null key: allowed, means "none"
@example(b"\x04" + bytes(32))
def test_public_key_parsing(raw):
    with only(InvalidKey):
        pk = PublicKey(raw)
        assert pk.raw == raw and (pk.is_null or libsecp256k1_accepts(raw))
        return
    assert not (len(raw) == PK_LEN and libsecp256k1_accepts(raw))

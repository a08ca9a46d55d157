
import pytest
from hypothesis import given, settings, strategies as st

from skypty.keys import InvalidKey, PublicKey, SecretKey, generate_keypair
from tests.vectors import load





def test_vector_keys_derive_their_public_keys():
    keys = load("disc_entry.json")["keys"]
    for record in keys.values():
        sk = SecretKey.from_hex(record["sk"])
        assert sk.public_key.hex() == record["pk"]


def test_sign_and_verify_roundtrip():
    pk, sk = generate_keypair()
    sig = sk.sign(b"payload")
    assert len(sig) == 65
    pk.verify(b"payload", sig)
    with pytest.raises(InvalidKey):
        pk.verify(b"other payload", sig)
    other, _ = generate_keypair()
    with pytest.raises(InvalidKey):
        other.verify(b"payload", sig)


def test_null_key():
    null = PublicKey.from_hex("00" * 33)
    assert null.is_null and null == PublicKey.null()
    with pytest.raises(InvalidKey):
        null.verify(b"x", bytes(65))


@pytest.mark.parametrize("text", ["", "zz" * 33, "02" * 32, "05" + "11" * 32, "02" + "ff" * 32])
def test_bad_public_keys_are_refused(text):
    with pytest.raises(InvalidKey):
        PublicKey.from_hex(text)


@pytest.mark.parametrize("text", ["", "00" * 32, "ff" * 32, "ab" * 31])
def test_bad_secret_keys_are_refused(text):
    with pytest.raises(InvalidKey):
        SecretKey.from_hex(text)


@given(st.binary(max_size=65 + 8))
def test_garbage_signatures_only_raise_invalid_key(sig):
    pk, _ = generate_keypair()
    with pytest.raises(InvalidKey):
        pk.verify(b"data", sig)


def test_ecdh_is_symmetric():
    a_pk, a_sk = generate_keypair()
    b_pk, b_sk = generate_keypair()
    assert a_sk.ecdh(b_pk) == b_sk.ecdh(a_pk)
    assert len(a_sk.ecdh(b_pk)) == 32


def test_secret_key_repr_hides_the_secret():
    sk = SecretKey.generate()
    assert sk.hex() not in repr(sk)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([2, 3]), st.binary(min_size=32, max_size=32))
def test_the_on_curve_check_agrees_with_libsecp256k1(prefix, x):
    import coincurve

    raw = bytes((prefix,)) + x
    try:
        coincurve.PublicKey(raw)
        valid = True
    except Exception:
        valid = False
    try:
        PublicKey(raw)
        ours = True
    except InvalidKey:
        ours = False
    assert ours == valid


def test_real_keys_and_bad_prefixes():
    import coincurve

    for _ in range(50):
        raw = coincurve.PrivateKey().public_key.format(compressed=True)
        assert PublicKey(raw).raw == raw
        with pytest.raises(InvalidKey):
            PublicKey(b"\x04" + raw[1:])
    with pytest.raises(InvalidKey):
        PublicKey(b"\x02" + (2**256 - 2**32 - 977).to_bytes(32, "big"))  # x = P is not a field element
    with pytest.raises(InvalidKey):
        SecretKey(bytes(32))

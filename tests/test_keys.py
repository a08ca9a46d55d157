
import pytest
from hypothesis import given, strategies as st

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

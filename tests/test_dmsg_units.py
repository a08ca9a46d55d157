"""dmsg pieces against the reference vectors: envelopes, signed objects."""

import hashlib

import pytest

from skypty.dmsg.session import DmsgError, EnvelopeCipher, object_hash, open_object, sign_object
from skypty.keys import PublicKey, SecretKey
from skypty.noise import FrameDecoder, FrameEncoder
from skypty.wire import types as T
from tests.test_disc import sign_with_nonce
from tests.vectors import load

V = load("stream_request.json")
REQ = V["request"]
RESP = V["response_side"]["response"]
HOPS = [(REQ["envelope_client_to_server"], REQ["signed_object"])] + [
    (V["response_side"]["envelopes"][hop], (REQ if hop == "server_to_B_forwarded_request" else RESP)["signed_object"])
    for hop in ("server_to_B_forwarded_request", "B_to_server_response", "server_to_A_forwarded_response")]


@pytest.mark.parametrize("envelope, signed", HOPS, ids=["A->S", "S->B", "B->S", "S->A"])
def test_every_hop_seals_and_opens_byte_exact(envelope, signed):
    key = bytes.fromhex(envelope["chacha20poly1305_key"])
    sealed = EnvelopeCipher(FrameEncoder(key), None).seal(bytes.fromhex(signed))
    assert sealed.hex() == envelope["wire"]
    assert EnvelopeCipher(None, FrameDecoder(key)).open(sealed).hex() == signed


def test_replayed_envelopes_are_refused_but_reordered_ones_accepted():
    key = bytes(range(32))
    enc = EnvelopeCipher(FrameEncoder(key), None)
    first, second = enc.seal(b"one"), enc.seal(b"two")
    dec = EnvelopeCipher(None, FrameDecoder(key))
    assert dec.open(second) == b"two"
    assert dec.open(first) == b"one"  # another stream's envelope read later: fine
    with pytest.raises(DmsgError, match="replayed"):
        dec.open(first)


def test_signed_request_and_response_match_the_reference():
    keys = {r: SecretKey.from_hex(k["sk"]) for r, k in V["keys"].items()}
    req, sig, raw = open_object(bytes.fromhex(REQ["signed_object"]), T.StreamRequest)
    req.src_addr.pk.verify(raw, sig)
    assert object_hash(bytes.fromhex(REQ["signed_object"])).hex() == REQ["signed_object_sha256"]
    # our signer produces the same object when given the reference's nonce
    ours = sign_object(keys["client_A"], req, T.StreamRequest)
    assert ours[65:] == raw  # same gob bytes from a fresh encoder
    digest = hashlib.sha256(raw).digest()
    assert sign_with_nonce(keys["client_A"], digest, int(REQ["signature"]["ecdsa_nonce_k"], 16)) == sig
    resp, rsig, rraw = open_object(bytes.fromhex(RESP["signed_object"]), T.StreamResponse)
    PublicKey.from_hex(V["keys"]["client_B"]["pk"]).verify(rraw, rsig)
    assert bytes(resp.req_hash).hex() == REQ["signed_object_sha256"]


def test_garbage_signed_objects_raise_protocol_errors():
    from skypty.errors import ProtocolError

    for blob in (b"", b"x" * 65, b"x" * 65 + b"\x05\xff\x81\x00\x00\x00"):
        with pytest.raises(ProtocolError):
            open_object(blob, T.StreamRequest)

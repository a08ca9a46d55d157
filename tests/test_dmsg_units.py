"""dmsg pieces against the reference vectors: envelopes, signed objects."""

import hashlib

import pytest

from skypty.wire import gob
from skypty.dmsg.session import DmsgError, EnvelopeCipher, object_hash, open_object, sign_object
from skypty.keys import PublicKey, SecretKey
from skypty.wire.noise import FrameDecoder, FrameEncoder
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


def test_signed_request_and_response_match_the_reference(monkeypatch):
    monkeypatch.setattr(gob, "FIRST_USER_ID", gob.LEGACY_FIRST_ID)  # the capture is from a Go < 1.21 build
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


# -- post-quantum offers are read and ignored (the classical handshake goes on) ---------

ML_KEM_768_KEY, ML_KEM_768_CIPHERTEXT = 1184, 1088  # the reference's payload sizes


def _pq_handshake(pattern):
    from skypty.keys import generate_keypair
    from skypty.wire.noise import NoiseHandshake

    (ipk, isk), (rpk, rsk) = generate_keypair(), generate_keypair()
    init = NoiseHandshake(pattern, True, isk, rpk)
    resp = NoiseHandshake(pattern, False, rsk, ipk if pattern == "KK" else None)
    return init, resp


@pytest.mark.parametrize("pattern", ["XK", "KK"])
def test_a_pq_offer_in_message_one_is_ignored(pattern):
    import os

    from skypty.wire.noise import HandshakeFramer, frame_handshake, pump_handshake

    init, resp = _pq_handshake(pattern)
    offer = init.write_message(os.urandom(ML_KEM_768_KEY))  # a current reference initiator
    # Through the framer, as a dmsg session or the Noise TCP port reads it.
    replies = pump_handshake(resp, HandshakeFramer(), frame_handshake(offer))
    assert len(replies) == 1
    reply = replies[0][2:]
    assert init.read_message(reply) == b""  # our answer carries no PQ ciphertext
    if pattern == "XK":
        resp.read_message(init.write_message())
    assert init.complete and resp.complete
    enc_i, dec_i = init.split()
    enc_r, dec_r = resp.split()
    assert dec_r.receive(enc_i.encrypt(b"classical")) == [b"classical"]
    assert dec_i.receive(enc_r.encrypt(b"both ways")) == [b"both ways"]


def test_a_pq_ciphertext_in_message_two_is_ignored():
    import os

    init, resp = _pq_handshake("KK")
    resp.read_message(init.write_message())
    assert init.read_message(resp.write_message(os.urandom(ML_KEM_768_CIPHERTEXT))) is not None
    enc_i, _ = init.split()
    _, dec_r = resp.split()
    assert dec_r.receive(enc_i.encrypt(b"ok")) == [b"ok"]


# -- stream requests: the shape is checked before anything trusts it ---------------------

def _request(**over):
    from skypty.keys import generate_keypair

    fields = dict(timestamp=1, src_addr=T.Addr.cls(pk=generate_keypair()[0], port=49153),
                  dst_addr=T.Addr.cls(pk=generate_keypair()[0], port=22), noise_msg=b"")
    fields.update(over)
    return T.StreamRequest.cls(**fields)


@pytest.mark.parametrize("over, why", [
    (dict(src_addr=T.Addr.cls(pk=None, port=1)), "source address has no key"),
    (dict(dst_addr=T.Addr.cls(pk=None, port=22)), "destination address has no key"),
    (dict(src_addr=T.Addr.cls(pk=PublicKey.null(), port=1)), "source address has no key"),
    (dict(src_addr=T.Addr.cls(pk=PublicKey.from_hex(V["keys"]["client_A"]["pk"]), port=0)), "source port"),
    (dict(dst_addr=T.Addr.cls(pk=PublicKey.from_hex(V["keys"]["client_B"]["pk"]), port=0)), "destination port"),
    (dict(timestamp=0), "timestamp"),
    (dict(src_addr=None), "without a source address"),
])
def test_malformed_stream_requests_are_protocol_errors(over, why):
    from skypty.dmsg.session import check_stream_request

    with pytest.raises(DmsgError, match=why):
        check_stream_request(_request(**over))
    check_stream_request(_request())  # the control: a sound request passes


# -- KK keepalive frames ------------------------------------------------------------------

def test_an_idle_kk_stream_writes_empty_frames_that_the_reader_drops():
    from twisted.internet import protocol, task
    from twisted.internet.testing import StringTransport

    from skypty.dmsg.stream import KEEPALIVE_INTERVAL, KKStream

    clock = task.Clock()
    key = bytes(range(32))
    stream = KKStream(clock)
    stream.makeConnection(StringTransport())
    inner = protocol.Protocol()
    stream._open(FrameEncoder(key), None, None, None, inner)
    reader = FrameDecoder(key)
    clock.advance(KEEPALIVE_INTERVAL - 1)
    assert stream.transport.value() == b""
    inner.transport.write(b"data")  # real writes push the keepalive back
    clock.advance(KEEPALIVE_INTERVAL - 1)
    assert reader.receive(stream.transport.value()) == [b"data"]
    stream.transport.clear()
    clock.advance(1)
    frame = stream.transport.value()
    assert len(frame) == 2 + 8 + 16  # an empty plaintext
    assert reader.receive(frame) == []  # dropped, nothing delivered
    stream.transport.clear()
    clock.advance(KEEPALIVE_INTERVAL)
    assert len(stream.transport.value()) == 26
    stream.connectionLost(None)
    stream.transport.clear()
    clock.advance(10 * KEEPALIVE_INTERVAL)
    assert stream.transport.value() == b"" and not clock.getDelayedCalls()

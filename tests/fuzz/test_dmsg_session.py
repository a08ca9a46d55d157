"""Fuzz: dmsg envelopes and signed objects (skypty.dmsg.session):
EnvelopeReader, EnvelopeCipher.open, open_object, take_stream_request."""

from hypothesis import example, given, strategies as st

from skypty.dmsg.session import (
    REPLAY_WINDOW, SIG_LEN, EnvelopeCipher, EnvelopeReader, open_object, sign_object,
)
from skypty.errors import ProtocolError
from skypty.keys import InvalidKey
from skypty.wire.noise import MAX_PLAINTEXT, TAG, FrameDecoder, FrameEncoder
from skypty.wire import gob
from skypty.wire import types as T
from tests.fuzz import fuzz, only
from tests.fuzz.strategies import PUBLIC_KEYS, SECRET_KEYS, chunk_sizes, chunked, edits, mutate, values_of
from tests.vectors import load

KEY = bytes(range(32, 64))
MAX_ENVELOPE = 2 + MAX_PLAINTEXT + 8 + TAG
_SR = load("stream_request.json")
SEED_SIGNED = [bytes.fromhex(_SR["request"]["gob"]), bytes.fromhex(_SR["response_side"]["response"]["gob"])]

def ciphers():
    return EnvelopeCipher(FrameEncoder(KEY), FrameDecoder(KEY))


@fuzz(200)
@given(st.binary(max_size=10000), chunk_sizes)
@example(b"\xff\xff", [])
def test_envelope_reader(data, sizes):
    reader = EnvelopeReader()
    with only(ProtocolError):
        for chunk in chunked(data, sizes):
            frame, rest = reader.feed(chunk)
            assert len(reader._buf) <= MAX_ENVELOPE
            if frame is not None:
                assert len(frame) <= MAX_ENVELOPE and len(frame) == 2 + int.from_bytes(frame[:2], "big")
                reader = EnvelopeReader()  # the reader hands the rest over: one envelope each
                if rest:
                    reader.feed(rest)


@fuzz(120)
@given(st.one_of(st.binary(max_size=600), st.tuples(st.sampled_from(SEED_SIGNED), edits).map(
    lambda se: bytes(SIG_LEN) + mutate(*se))), st.sampled_from([T.StreamRequest, T.StreamResponse]))
@example(b"", T.StreamRequest)
@example(bytes(SIG_LEN + 1), T.StreamResponse)
def test_open_object(signed, gotype):
    with only(ProtocolError):
        value, sig, raw = open_object(signed, gotype)
        assert isinstance(value, gotype.cls) and sig + raw == signed


@fuzz(100)
@given(st.lists(st.integers(0, 3 * REPLAY_WINDOW), max_size=40))
def test_envelope_nonces_never_repeat(nonces):
    enc, cipher = FrameEncoder(KEY), ciphers()
    accepted = []
    for n in nonces:
        enc.nonce = n - 1
        frame = enc.encrypt_one(b"x")
        with only(ProtocolError):
            assert cipher.open(frame) == b"x"
            accepted.append(n)
        assert len(cipher._seen) <= REPLAY_WINDOW + 1
    assert len(accepted) == len(set(accepted))


ports = st.integers(1, 0xFFFF)
addrs = st.builds(T.Addr.cls, pk=st.sampled_from(PUBLIC_KEYS), port=ports)
good_requests = st.builds(T.StreamRequest.cls, timestamp=st.integers(1, 2**63 - 1), src_addr=addrs, dst_addr=addrs,
                          noise_msg=st.binary(max_size=200))
signers = st.integers(0, len(SECRET_KEYS) - 1)


def take(signed, sizes):
    cipher_out, cipher_in = ciphers(), ciphers()
    wire = cipher_out.seal(signed) + b"after"
    reader = EnvelopeReader()
    got = None
    for chunk in chunked(wire, sizes):
        got = reader.take_stream_request(chunk, cipher_in)
        if got is not None:
            break
    return got


@fuzz(100)
@given(good_requests, signers, chunk_sizes)
def test_stream_request_round_trip(req, signer, sizes):
    signed = sign_object(SECRET_KEYS[signer], req, T.StreamRequest)
    honest = SECRET_KEYS[signer].public_key == req.src_addr.pk
    with only(InvalidKey):
        got = take(signed, sizes)
        assert honest, "a request signed by another key than its source was accepted"
        value, whole, rest = got
        assert value == req and whole == signed and rest.startswith(b"after"[:len(rest)])
        return
    assert not honest


def signed_any(value, signer):
    return sign_object(SECRET_KEYS[signer], value, T.StreamRequest)


hostile_requests = st.one_of(
    st.tuples(values_of(T.StreamRequest), signers).map(lambda vs: signed_any(*vs)),
    st.tuples(st.sampled_from(SEED_SIGNED), edits, st.binary(min_size=SIG_LEN, max_size=SIG_LEN)).map(
        lambda s: s[2] + mutate(s[0], s[1])),
    st.binary(max_size=400),
)
NO_KEY_REQUEST = signed_any(T.StreamRequest.cls(timestamp=1, src_addr=T.Addr.cls(pk=None, port=1),
                                                dst_addr=T.Addr.cls(pk=PUBLIC_KEYS[1], port=2)), 0)


@fuzz(200)
@given(hostile_requests, chunk_sizes)
# take_stream_request raised AttributeError (None has no verify): gob leaves a zero SrcAddr.PK out
@example(NO_KEY_REQUEST, [])
def test_stream_request_hostile(signed, sizes):
    # InvalidKey is take_stream_request's documented answer to a bad signature
    with only(ProtocolError, InvalidKey):
        got = take(signed, sizes)
        if got is not None:
            req = got[0]
            assert isinstance(req, T.StreamRequest.cls) and req.src_addr.pk is not None
            req.src_addr.pk.verify(signed[SIG_LEN:], signed[:SIG_LEN])

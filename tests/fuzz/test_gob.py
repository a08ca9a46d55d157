"""Fuzz: the gob Decoder, decoding as every wire type in skypty.wire.types."""

from hypothesis import example, given, strategies as st

from skypty.wire import gob
from skypty.wire import types as T
from tests.fuzz import fuzz, only
from tests.fuzz.strategies import GO_TYPES, chunk_sizes, chunked, edits, mutate, values_of
from tests.vectors import load

CAP = 4096  # a small max_message, so that the buffer bound is checked for real

_GOB = load("gob.json")
_SR = load("stream_request.json")
SEED_STREAMS = [bytes.fromhex(sc[d]["stream"]) for sc in _GOB["scenarios"].values()
                for d in ("client_to_server", "server_to_client")]
SEED_STREAMS += [bytes.fromhex(_SR["request"]["gob"]), bytes.fromhex(_SR["response_side"]["response"]["gob"])]

expected_types = st.one_of(st.none(), st.sampled_from(GO_TYPES))


def drain(dec, expected):
    """Take values until NEED_MORE; the buffer must then be under the cap."""
    while True:
        value = dec.next_value(expected)
        if value is gob.NEED_MORE:
            assert dec.buffered < dec.max_message + 9  # at most one message and its length
            return
        if expected is None:
            for t in GO_TYPES:  # a generic value must convert or refuse with GobError
                with only(gob.GobError):
                    gob.convert(value, t)


def run_decoder(data, sizes, expected, max_message=CAP):
    dec = gob.Decoder(max_message=max_message)
    with only(gob.GobError):
        for chunk in chunked(data, sizes):
            dec.feed(chunk)
            drain(dec, expected)


@fuzz(200)
@given(st.binary(max_size=2000), chunk_sizes, expected_types)
@example(b"\xfc\xff\xff\xff\xff", [], None)                      # a 2**32 length: refused before buffering
@example(b"\x04\x81\x09\x00\x00", [], None)                      # redefine a builtin id
@example(b"\x07\xff\x82\x00\x05\xff\xff\xff\xff", [1], T.SHA256)  # uint longer than 8 bytes
def test_gob_random_bytes(data, sizes, expected):
    run_decoder(data, sizes, expected)


@fuzz(200)
@given(st.sampled_from(SEED_STREAMS), edits, chunk_sizes, expected_types)
def test_gob_mutated_reference_streams(stream, changes, sizes, expected):
    run_decoder(mutate(stream, changes), sizes, expected, max_message=gob.MAX_MESSAGE)


# A wire type a peer defines (any shape, self-references included) and a value
# of it: structured input reaches the value decoder more often than noise.
def _wire_type_message(tid, kind, fields, elem, length):
    body = [gob.encode_int(-tid)]
    if kind == "struct":
        body += [b"\x03\x01\x01\x01\x01S\x01", gob.encode_int(tid), b"\x00"]
        if fields:
            body += [b"\x01", gob.encode_uint(len(fields))]
            for name, ftid in fields:
                body += [b"\x01", gob.encode_uint(len(name)), name.encode(), b"\x01", gob.encode_int(ftid), b"\x00"]
        body.append(b"\x00\x00")
    elif kind == "slice":
        body += [b"\x02\x01\x01\x01\x01L\x01", gob.encode_int(tid), b"\x00\x01", gob.encode_int(elem), b"\x00\x00"]
    elif kind == "array":
        body += [b"\x01\x01\x01\x01\x01A\x01", gob.encode_int(tid), b"\x00\x01", gob.encode_int(elem),
                 b"\x01", gob.encode_int(length), b"\x00\x00"]
    else:  # map: key and elem
        body += [b"\x04\x01\x01\x01\x01M\x01", gob.encode_int(tid), b"\x00\x01", gob.encode_int(elem),
                 b"\x01", gob.encode_int(elem), b"\x00\x00"]
    raw = b"".join(body)
    return gob.encode_uint(len(raw)) + raw


type_ids = st.integers(1, 70)
definitions = st.lists(st.tuples(
    st.sampled_from(["struct", "slice", "array", "map"]),
    st.lists(st.tuples(st.sampled_from(["ServiceMethod", "Seq", "Error", "Name", "PK", "X", "NoiseMsg"]), type_ids),
             max_size=4),
    type_ids, st.integers(-2, 40)), min_size=1, max_size=5)


@fuzz(200)
@given(definitions, st.integers(65, 70), st.binary(max_size=200), chunk_sizes, expected_types)
def test_gob_peer_defined_types(defs, value_tid, value, sizes, expected):
    stream = b"".join(_wire_type_message(65 + i, *d) for i, d in enumerate(defs))
    body = gob.encode_int(value_tid) + value
    run_decoder(stream + gob.encode_uint(len(body)) + body, sizes, expected)


@fuzz(200)
@given(st.sampled_from(GO_TYPES).flatmap(lambda t: st.tuples(st.just(t), st.lists(values_of(t), min_size=1,
                                                                                    max_size=3))),
       chunk_sizes)
def test_gob_round_trip(typed_values, sizes):
    gotype, values = typed_values
    enc = gob.Encoder()
    wire = b"".join(enc.encode(v, gotype) for v in values)
    dec = gob.Decoder()
    got = []
    for chunk in chunked(wire, sizes):
        dec.feed(chunk)
        while (v := dec.next_value(gotype)) is not gob.NEED_MORE:
            got.append(v)
    assert got == values and dec.buffered == 0


@fuzz(100)
@given(st.integers(0, 64), st.booleans())
@example(5, False)  # [32]byte sent as a 5-byte []byte: converted with no length check
def test_gob_array_length_is_checked(n, as_bytes):
    generic = bytes(n) if as_bytes else [0] * n
    with only(gob.GobError):
        value = gob.convert(generic, T.SHA256)
        assert len(value) == 32


import pytest
from hypothesis import given, settings, strategies as st

from skypty.keys import PublicKey, generate_keypair
from skypty.wire import gob
from skypty.wire import types as T
from tests.vectors import load





GOB = load("gob.json")
# method -> (argument type, reply type), as the reference's gateways declare them
METHODS = {
    "pty.Start": (T.CommandReqV1, T.EMPTY), "pty.Read": (T.INT, T.BYTES), "pty.Write": (T.BYTES, T.INT),
    "pty.SetPtySize": (T.WinSize, T.EMPTY), "pty.Stop": (T.EMPTY, T.EMPTY),
    "whitelist.Whitelist": (T.EMPTY, T.PubKeys), "whitelist.WhitelistAdd": (T.PubKeys, T.EMPTY),
}


def decode_all(stream):
    dec = gob.Decoder()
    dec.feed(stream)
    values = []
    while (v := dec.next_value()) is not gob.NEED_MORE:
        values.append(v)
    assert dec.buffered == 0
    return values


@pytest.mark.parametrize("scenario", sorted(GOB["scenarios"]))
def test_rpc_streams_reencode_byte_for_byte(scenario):
    sc = GOB["scenarios"][scenario]
    for direction, header_type, which in (("client_to_server", T.Request, 0), ("server_to_client", T.Response, 1)):
        stream = bytes.fromhex(sc[direction]["stream"])
        generic = decode_all(stream)
        enc = gob.Encoder(first_id=gob.LEGACY_FIRST_ID)  # captured from a Go < 1.21 build
        out = []
        for header, body in zip(generic[::2], generic[1::2]):
            h = gob.convert(header, header_type)
            body_type = T.EMPTY if getattr(h, "error", "") else METHODS[h.service_method][which]
            value = gob.convert(body, body_type)
            out.append(enc.encode(h, header_type) + enc.encode(value, body_type))
        assert b"".join(out).hex() == stream.hex()
        # ... and message by message, as the vector splits them
        assert [m["hex"] for m in sc[direction]["messages"]] == [o.hex() for o in out]


def test_decoded_values_are_the_expected_python_values():
    sc = GOB["scenarios"]["pty"]
    values = decode_all(bytes.fromhex(sc["client_to_server"]["stream"]))
    start = gob.convert(values[1], T.CommandReq)
    assert start.env == []
    assert (start.name, start.arg, start.size.rows, start.size.cols, start.size.x) == ("/bin/echo", ["hi"], 24, 80, 0)
    assert gob.convert(values[3], T.INT) == 1024
    assert gob.convert(values[5], T.BYTES) == b"ls\n"
    error = gob.convert(decode_all(bytes.fromhex(sc["server_to_client"]["stream"]))[-2], T.Response)
    assert (error.error, error.seq) == ("EOF", 5)
    wl = decode_all(bytes.fromhex(GOB["scenarios"]["whitelist"]["server_to_client"]["stream"]))
    keys = gob.convert(wl[1], T.PubKeys)
    assert all(isinstance(k, PublicKey) for k in keys) and len(keys) == 2


def test_stream_request_and_response_gob_are_byte_exact():
    v = load("stream_request.json")
    for record, gotype in ((v["request"], T.StreamRequest), (v["response_side"]["response"], T.StreamResponse)):
        raw = bytes.fromhex(record["gob"])
        (generic,) = decode_all(raw)
        value = gob.convert(generic, gotype)
        assert gob.Encoder(first_id=gob.LEGACY_FIRST_ID).encode(value, gotype) == raw
    req = gob.convert(decode_all(bytes.fromhex(v["request"]["gob"]))[0], T.StreamRequest)
    assert (req.src_addr.port, req.dst_addr.port, req.timestamp) == (49153, 22, 1700000000123456789)
    resp = gob.convert(decode_all(bytes.fromhex(v["response_side"]["response"]["gob"]))[0], T.StreamResponse)
    assert bytes(resp.req_hash).hex() == v["request"]["signed_object_sha256"] and resp.accepted


text = st.text(max_size=40)
blobs = st.binary(max_size=3000)
u16 = st.integers(0, 65535)
int64 = st.integers(-(2**63), 2**63 - 1)
win = st.builds(T.WinSize.cls, x=u16, y=u16, rows=u16, cols=u16)
VALUES = [
    (T.CommandReq, st.builds(T.CommandReq.cls, name=text, arg=st.lists(text, max_size=5),
                             size=st.one_of(st.none(), win), env=st.lists(text, max_size=5))),
    (T.CommandExecReq, st.builds(T.CommandExecReq.cls, name=text, arg=st.lists(text, max_size=4),
                                 env=st.lists(text, max_size=4), stdin=blobs, timeout_ms=int64)),
    (T.CommandExecResult, st.builds(T.CommandExecResult.cls, stdout=blobs, stderr=blobs, stdout_truncated=st.booleans(),
                                    stderr_truncated=st.booleans(), exit_code=int64, timed_out=st.booleans(),
                                    duration_ms=int64)),
    (T.StreamResponse, st.builds(T.StreamResponse.cls, req_hash=st.lists(st.integers(0, 255), min_size=32, max_size=32),
                                 accepted=st.booleans(), err_code=u16, noise_msg=blobs)),
    (T.INT, int64), (T.BYTES, blobs), (T.STRING, text), (T.WinSize, win),
    (T.PubKeys, st.lists(st.builds(lambda: generate_keypair()[0]), max_size=4)),
]


@pytest.mark.parametrize("gotype, strategy", VALUES, ids=[repr(t) for t, _ in VALUES])
def test_round_trip(gotype, strategy):
    @given(st.lists(strategy, min_size=1, max_size=4))
    @settings(max_examples=40, deadline=None)
    def run(values):
        enc, dec = gob.Encoder(), gob.Decoder()
        for value in values:
            dec.feed(enc.encode(value, gotype))
            assert dec.next_value(gotype) == value
        assert dec.next_value(gotype) is gob.NEED_MORE

    run()


def test_byte_at_a_time_feeding():
    enc, dec = gob.Encoder(), gob.Decoder()
    value = T.CommandReq.cls(name="sh", arg=["-c", "x"], size=T.WinSize.cls(rows=1, cols=2), env=["A=b"])
    for b in enc.encode(value, T.CommandReq):
        assert dec.next_value(T.CommandReq) is gob.NEED_MORE
        dec.feed(bytes([b]))
    assert dec.next_value(T.CommandReq) == value


@pytest.mark.parametrize("data", [
    b"\xfc\xff\xff\xff\xff",                 # a 2**32 length: refused before buffering it
    b"\xf8\x7f\xff\xff\xff\xff\xff\xff\xff",
    b"\x00", b"\x03\xff\x82\x00",           # empty message; value of an unknown type
    b"\x02\x01\x07",                         # bool of 7 (needs a full message)
    b"\x04\x0a\x00\x7f\x01",                 # []byte longer than its message
    b"\x04\x81\x09\x00\x00",                 # redefine a builtin id
])
def test_hostile_input_raises_gob_error(data):
    dec = gob.Decoder()
    dec.feed(data)
    with pytest.raises(gob.GobError):
        dec.next_value()


def test_recursive_types_are_bounded():
    # type 65 = struct { A *65 }: a value nested 100 deep must be refused, not recurse away.
    enc_def = bytes.fromhex("ff81") + b"\x03\x01\x01\x01Z\x01\xff\x82\x00\x01\x01\x01\x01A\x01\xff\x82\x00\x00\x00"
    dec = gob.Decoder()
    dec.feed(gob.encode_uint(len(enc_def)) + enc_def)
    value = b"\xff\x82" + b"\x01" * 100 + b"\x00" * 101
    dec.feed(gob.encode_uint(len(value)) + value)
    with pytest.raises(gob.GobError, match="deeply"):
        dec.next_value()


@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_random_bytes_only_raise_gob_error(data):
    dec = gob.Decoder(max_message=1 << 20)
    dec.feed(data)
    try:
        while dec.next_value() is not gob.NEED_MORE:
            pass
    except gob.GobError:
        pass


@given(st.binary(min_size=1, max_size=64))
def test_mutated_vector_streams_only_raise_gob_error(noise):
    stream = bytearray(bytes.fromhex(GOB["scenarios"]["pty"]["client_to_server"]["stream"]))
    for i, b in enumerate(noise):
        stream[(i * 37 + b) % len(stream)] ^= b
    dec = gob.Decoder()
    dec.feed(bytes(stream))
    try:
        while (v := dec.next_value()) is not gob.NEED_MORE:
            try:
                gob.convert(v, T.CommandReq)
            except gob.GobError:
                pass
    except gob.GobError:
        pass


def test_an_array_sent_as_bytes_must_have_its_length():
    # A peer may send a [32]byte as a []byte; a short one used to convert with no length check.
    assert gob.convert(bytes(range(32)), T.SHA256) == list(range(32))
    with pytest.raises(gob.GobError, match="32 elements"):
        gob.convert(b"\x01" * 5, T.SHA256)


def test_type_ids_from_64_as_go_1_21_numbers_them_and_below_is_refused():
    """Go >= 1.21 hands out 64 first (older builds 65): both must decode, and
    our encoder numbers as current Go does."""
    raw = gob.Encoder().encode(T.WinSize.cls(x=0, y=0, rows=24, cols=80), T.WinSize)
    assert raw[1] == 0x7f  # -64: the definition of type 64
    dec = gob.Decoder()
    dec.feed(raw)
    assert gob.convert(dec.next_value(), T.WinSize).cols == 80
    legacy = gob.Encoder(first_id=gob.LEGACY_FIRST_ID).encode(T.WinSize.cls(x=0, y=0, rows=24, cols=80), T.WinSize)
    dec = gob.Decoder()
    dec.feed(legacy)
    assert gob.convert(dec.next_value(), T.WinSize).rows == 24
    dec = gob.Decoder()
    dec.feed(gob.Encoder(first_id=63).encode(T.WinSize.cls(x=0, y=0, rows=24, cols=80), T.WinSize))
    with pytest.raises(gob.GobError, match="builtin type 63"):
        dec.next_value()

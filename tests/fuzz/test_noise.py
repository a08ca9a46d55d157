"""Fuzz: Noise frames (FrameDecoder), handshake framing (HandshakeFramer) and
the XK/KK handshake messages (NoiseHandshake.read_message, both roles)."""

from hypothesis import example, given, strategies as st

from skypty.wire.noise import (
    MAX_FRAME, MAX_HANDSHAKE_MESSAGE, MAX_PLAINTEXT, FrameDecoder, FrameEncoder, HandshakeFramer, NoiseError,
    NoiseHandshake, frame_handshake, pump_handshake,
)
from tests.fuzz import fuzz, only
from tests.fuzz.strategies import SECRET_KEYS, chunk_sizes, chunked, edits, mutate

KEY = bytes(range(32))
INIT_S, RESP_S, INIT_E, RESP_E, OTHER = SECRET_KEYS[:5]


def good_frames(payloads):
    enc = FrameEncoder(KEY)
    return b"".join(enc.encrypt(p) for p in payloads)


payloads = st.lists(st.binary(min_size=1, max_size=MAX_PLAINTEXT + 100), max_size=4)


def run_frames(data, sizes):
    dec = FrameDecoder(KEY)
    out = []
    with only(NoiseError):
        for chunk in chunked(data, sizes):
            out += dec.receive(chunk)
            assert dec.buffered < MAX_FRAME
    return dec, out


@fuzz(200)
@given(st.binary(max_size=3000), chunk_sizes)
@example(b"\x00\x18" + bytes(24), [])   # the shortest frame, zero nonce: replay of nonce 0
@example(b"\xff\xff", [])                # longer than any frame
def test_frames_random_bytes(data, sizes):
    run_frames(data, sizes)


@fuzz(200)
@given(payloads, edits, chunk_sizes)
def test_frames_mutated(plaintexts, changes, sizes):
    wire = good_frames(plaintexts)
    dec, out = run_frames(mutate(wire, changes), sizes)
    joined = b"".join(out)
    assert b"".join(plaintexts).startswith(joined)  # never anything the sender did not send


@fuzz(200)
@given(payloads, chunk_sizes)
def test_frames_round_trip(plaintexts, sizes):
    wire = good_frames(plaintexts)
    dec, out = run_frames(wire, sizes)
    assert b"".join(out) == b"".join(plaintexts) and dec.buffered == 0


@fuzz(200)
@given(st.binary(max_size=200))
def test_decrypt_one_random_bytes(frame):
    with only(NoiseError):
        FrameDecoder(KEY).decrypt_one(frame)


@fuzz(200)
@given(st.one_of(st.binary(max_size=3000),
                 st.lists(st.binary(max_size=MAX_HANDSHAKE_MESSAGE), max_size=4).map(
                     lambda ms: b"".join(frame_handshake(m) for m in ms))),
       chunk_sizes)
def test_handshake_framer(data, sizes):
    framer = HandshakeFramer()
    with only(NoiseError):
        for chunk in chunked(data, sizes):
            framer.feed(chunk)
            while (message := framer.next_message()) is not None:
                assert len(message) <= MAX_HANDSHAKE_MESSAGE
            assert len(framer._buf) < 2 + MAX_HANDSHAKE_MESSAGE  # drained: at most one partial message


@fuzz(200)
@given(st.lists(st.binary(max_size=MAX_HANDSHAKE_MESSAGE), max_size=4), chunk_sizes)
def test_handshake_framer_round_trip(messages, sizes):
    framer, got = HandshakeFramer(), []
    for chunk in chunked(b"".join(frame_handshake(m) for m in messages) + b"\x00", sizes):
        framer.feed(chunk)
        while (message := framer.next_message()) is not None:
            got.append(message)
    assert got == messages and framer.take_rest() == b"\x00"


# -- handshake messages ----------------------------------------------------------

def pair(pattern):
    init = NoiseHandshake(pattern, True, INIT_S, RESP_S.public_key, INIT_E)
    resp = NoiseHandshake(pattern, False, RESP_S, INIT_S.public_key if pattern == "KK" else None, RESP_E)
    return init, resp


def honest_messages(pattern):
    """The genuine messages of a whole handshake, in order."""
    init, resp = pair(pattern)
    out, sides = [], [init, resp]
    i = 0
    while not (init.complete and resp.complete):
        writer, reader = sides[i % 2], sides[(i + 1) % 2]
        msg = writer.write_message()
        reader.read_message(msg)
        out.append(msg)
        i += 1
    return out


HONEST = {p: honest_messages(p) for p in ("XK", "KK")}
# (pattern, index of the message the fuzzed side reads): responder reads 0 (and 2 for XK), initiator reads 1
STEPS = [("XK", 0), ("XK", 1), ("XK", 2), ("KK", 0), ("KK", 1)]


def reader_at(pattern, index):
    """The side that reads message *index*, with the honest messages before it processed."""
    init, resp = pair(pattern)
    for i, msg in enumerate(HONEST[pattern][:index]):
        writer, reader = (init, resp) if i % 2 == 0 else (resp, init)
        writer.write_message()
        reader.read_message(msg)
    reader = resp if index % 2 == 0 else init
    if not reader.complete and reader._my_turn():
        reader.write_message()
    return reader


def read_hostile(step, message):
    pattern, index = step
    reader = reader_at(pattern, index)
    with only(NoiseError):
        reader.read_message(message)
        if reader.complete:
            enc, dec = reader.split()
            assert reader.remote_static is not None


@fuzz(150)
@given(st.sampled_from(STEPS), st.binary(max_size=MAX_HANDSHAKE_MESSAGE + 20))
@example(("XK", 0), b"")
@example(("XK", 2), bytes(33))
@example(("XK", 0), b"\x02" * 33)   # not a point
def test_handshake_random_message(step, message):
    read_hostile(step, message)


@fuzz(100)
@given(st.sampled_from(STEPS), edits)
def test_handshake_mutated_message(step, changes):
    pattern, index = step
    read_hostile(step, mutate(HONEST[pattern][index], changes))


@fuzz(60)
@given(st.sampled_from(["XK", "KK"]), chunk_sizes, st.binary(max_size=40))
def test_handshake_round_trip_over_a_framed_stream(pattern, sizes, tail):
    """The genuine handshake, cut anywhere, through pump_handshake on the responder."""
    init, resp = pair(pattern)
    framer = HandshakeFramer()
    first = frame_handshake(init.write_message())
    replies = []
    for chunk in chunked(first, sizes):
        replies += pump_handshake(resp, framer, chunk)
    for reply in replies:
        init.read_message(reply[2:])
    after = b""
    if not init.complete:
        last = frame_handshake(init.write_message())
        for chunk in chunked(last + tail, sizes):
            if resp.complete:
                after += chunk  # the session hands later bytes to yamux, not to the framer
            else:
                pump_handshake(resp, framer, chunk)
    assert init.complete and resp.complete
    assert framer.take_rest() + after == (tail if pattern == "XK" else b"")
    assert resp.remote_static == INIT_S.public_key and init.handshake_hash == resp.handshake_hash

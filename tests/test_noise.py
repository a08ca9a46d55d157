import os

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from skypty.keys import SecretKey, generate_keypair
from skypty.wire.noise import (
    MAX_FRAME, MAX_PLAINTEXT, FrameDecoder, FrameEncoder, HandshakeFramer, NoiseError,
    NoiseHandshake, frame_handshake,
)
from skypty.wire.noiseproto import NoiseFactory, connect_noise_xk
from tests.vectors import load





def vector_handshake(name, pattern):
    d = load(name)
    k = {role: SecretKey.from_hex(v["sk"]) for role, v in d["keys"].items()}
    init = NoiseHandshake(pattern, True, k["initiator_static"], k["responder_static"].public_key,
                          k["initiator_ephemeral"])
    resp = NoiseHandshake(pattern, False, k["responder_static"],
                          k["initiator_static"].public_key if pattern == "KK" else None,
                          k["responder_ephemeral"])
    return d, k, init, resp


@pytest.mark.parametrize("name, pattern", [("noise_xk.json", "XK"), ("noise_kk.json", "KK")])
def test_vector_handshake_and_frames_are_byte_exact(name, pattern):
    d, k, init, resp = vector_handshake(name, pattern)
    assert init.handshake_hash.hex() == d["handshake"]["initial_h"]
    assert init.chaining_key.hex() == d["handshake"]["initial_ck"]
    for m in d["handshake"]["messages"]:
        writer, reader = (init, resp) if m["direction"].startswith("client-A") else (resp, init)
        msg = writer.write_message()
        assert msg.hex() == m["message"]
        if "on_wire_with_u16_len_prefix" in m:
            assert frame_handshake(msg).hex() == m["on_wire_with_u16_len_prefix"]
        assert reader.read_message(msg) == b""
        assert writer.chaining_key.hex() == m["ck_after"]
        assert reader.handshake_hash.hex() == m["h_after"]
    assert init.handshake_hash.hex() == resp.handshake_hash.hex() == d["handshake_hash"]
    assert init.chaining_key.hex() == d["final_ck"]
    assert resp.remote_static == k["initiator_static"].public_key
    assert init.remote_static == k["responder_static"].public_key
    (ienc, idec), (renc, rdec) = init.split(), resp.split()
    split = d["split"]
    init_key = split["cs2_key"] if split["initiator_encrypts_with"].startswith("cs2") else split["cs1_key"]
    for frame in d["transport_frames"]:
        from_init = frame["direction"].startswith("client-A")
        enc, dec = (ienc, rdec) if from_init else (renc, idec)
        plaintext = bytes.fromhex(frame["plaintext"])
        wire = enc.encrypt(plaintext)
        assert wire.hex() == frame["wire"]
        assert dec.receive(wire) == [plaintext]
        if from_init:
            assert frame["chacha20poly1305_key"] == init_key


def test_kk_large_write_splits_like_the_reference():
    d, k, init, resp = vector_handshake("noise_kk.json", "KK")
    resp.read_message(init.write_message())
    init.read_message(resp.write_message())
    (ienc, _), (_, rdec) = init.split(), resp.split()
    for frame in d["transport_frames"]:  # advance the nonces as the vector did
        if frame["direction"].startswith("client-A"):
            rdec.receive(ienc.encrypt(bytes.fromhex(frame["plaintext"])))
    large = d["large_write"]
    data = bytes.fromhex(large["plaintext"]) if "plaintext" in large else bytes(
        (i & 0xFF) for i in range(large.get("plaintext_len", 4100)))
    wire = ienc.encrypt(data)
    frames = large["frames"]
    assert wire.hex() == "".join(f["wire"] for f in frames)
    assert b"".join(rdec.receive(wire)) == data


def pair(pattern="XK"):
    a_pk, a_sk = generate_keypair()
    b_pk, b_sk = generate_keypair()
    init = NoiseHandshake(pattern, True, a_sk, b_pk)
    resp = NoiseHandshake(pattern, False, b_sk, a_pk if pattern == "KK" else None)
    writer, reader = init, resp
    while not (init.complete and resp.complete):
        reader.read_message(writer.write_message())
        writer, reader = reader, writer
    return init, resp


@pytest.mark.parametrize("pattern", ["XK", "KK"])
def test_random_ephemerals_both_ways(pattern):
    init, resp = pair(pattern)
    (ienc, idec), (renc, rdec) = init.split(), resp.split()
    assert rdec.receive(ienc.encrypt(b"hello")) == [b"hello"]
    assert idec.receive(renc.encrypt(b"world")) == [b"world"]


def test_wrong_pinned_key_fails_the_handshake():
    a_pk, a_sk = generate_keypair()
    b_pk, b_sk = generate_keypair()
    wrong, _ = generate_keypair()
    init = NoiseHandshake("XK", True, a_sk, wrong)
    resp = NoiseHandshake("XK", False, b_sk)
    with pytest.raises(NoiseError):
        resp.read_message(init.write_message())


@given(st.binary(max_size=20000), st.lists(st.integers(1, 5000), max_size=20))
@settings(max_examples=60, deadline=None)
def test_round_trip_any_chunking(data, cuts):
    key = os.urandom(32)
    enc, dec = FrameEncoder(key), FrameDecoder(key)
    wire = enc.encrypt(data)
    out, pos = [], 0
    for cut in cuts + [len(wire)]:
        out += dec.receive(wire[pos:pos + cut])
        pos += cut
        assert dec.buffered < MAX_FRAME
    assert b"".join(out) == data
    assert all(len(p) <= MAX_PLAINTEXT for p in out)


def test_replay_reorder_and_tamper_are_refused():
    key = os.urandom(32)
    enc = FrameEncoder(key)
    f1, f2 = enc.encrypt(b"one"), enc.encrypt(b"two")
    dec = FrameDecoder(key)
    assert dec.receive(f1) == [b"one"]
    with pytest.raises(NoiseError, match="replayed"):
        dec.receive(f1)
    dec = FrameDecoder(key)
    dec.receive(f2)
    with pytest.raises(NoiseError):
        dec.receive(f1)
    bad = bytearray(f1)
    bad[-1] ^= 1
    with pytest.raises(NoiseError, match="authentication"):
        FrameDecoder(key).receive(bytes(bad))


@pytest.mark.parametrize("data", [b"\xff\xff", b"\x00\x05" + b"x" * 5, b"\x10\x00" + bytes(4096)])
def test_bad_lengths_are_refused_before_buffering(data):
    with pytest.raises(NoiseError):
        FrameDecoder(os.urandom(32)).receive(data)


@given(st.binary(max_size=600))
def test_random_bytes_only_raise_noise_error(data):
    try:
        FrameDecoder(os.urandom(32)).receive(data)
    except NoiseError:
        pass
    resp = NoiseHandshake("XK", False, SecretKey.generate())
    try:
        resp.read_message(data)
    except NoiseError:
        pass
    try:
        framer = HandshakeFramer()
        framer.feed(data)
        while framer.next_message() is not None:
            pass
    except NoiseError:
        pass


# -- the Twisted wrapper -------------------------------------------------------------

class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class Collect(protocol.Protocol):
    def __init__(self):
        self.data = b""
        self.waiter = None
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.data += data
        if self.waiter and len(self.data) >= self.waiter[1]:
            d, self.waiter = self.waiter[0], None
            d.callback(self.data)

    def wait_for(self, n):
        if len(self.data) >= n:
            return defer.succeed(self.data)
        d = defer.Deferred()
        self.waiter = (d, n)
        return d

    def connectionLost(self, reason):
        self.lost.callback(None)


class WrapperTests(unittest.TestCase):
    def listen(self, **kw):
        self.server_pk, self.server_sk = generate_keypair()
        self.built = []

        class Factory(protocol.Factory):
            def buildProtocol(inner_self, addr):
                self.built.append(addr)
                return Echo()

        factory = NoiseFactory(Factory(), "XK", False, self.server_sk, **kw)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_echo_over_loopback_with_proven_keys(self):
        port = self.listen()
        client_pk, client_sk = generate_keypair()
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        proto = yield connect_noise_xk(ep, client_sk, self.server_pk,
                                       protocol.Factory.forProtocol(Collect))
        payload = os.urandom(100000)
        proto.transport.write(payload)
        got = yield proto.wait_for(len(payload))
        self.assertEqual(got, payload)
        self.assertEqual(proto.transport.getPeerPK(), self.server_pk)
        proto.transport.loseConnection()
        yield proto.lost

    @defer.inlineCallbacks
    def test_unauthorized_peer_never_reaches_the_inner_factory(self):
        port = self.listen(authorize=lambda pk: False)
        client_pk, client_sk = generate_keypair()
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        proto = yield connect_noise_xk(ep, client_sk, self.server_pk,
                                       protocol.Factory.forProtocol(Collect))
        yield proto.lost
        self.assertEqual(self.built, [])

    def test_handshake_timeout_with_a_clock(self):
        clock = task.Clock()
        pk, sk = generate_keypair()
        factory = NoiseFactory(protocol.Factory.forProtocol(Echo), "XK", False, sk, reactor=clock)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        errors = []
        proto.handshake_done.addErrback(errors.append)
        clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.assertEqual(len(errors), 1)

    def test_garbage_aborts_cleanly(self):
        pk, sk = generate_keypair()
        factory = NoiseFactory(protocol.Factory.forProtocol(Echo), "XK", False, sk, reactor=task.Clock())
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        errors = []
        proto.handshake_done.addErrback(errors.append)
        proto.dataReceived(b"\x00\x31" + os.urandom(49))
        self.assertTrue(transport.disconnecting or transport.disconnected)
        proto.dataReceived(b"more garbage")  # ignored, no exception
        self.assertEqual(len(errors), 1)
        huge = factory.buildProtocol(None)
        t2 = StringTransport()
        huge.makeConnection(t2)
        huge.dataReceived(b"\xff\xff")
        self.assertTrue(t2.disconnecting or t2.disconnected)

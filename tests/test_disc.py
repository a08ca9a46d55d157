"""dmsg discovery: entries byte-exact with the reference, the embedded API, the keeper."""

import json

import attr
import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from skypty.dmsg.disc import (
    DiscoveryClient, DiscoveryError, EntryError, EntryKeeper, EntryNotFound, client_entry,
    entry_from_json, server_entry,
)
from skypty.dmsg.discserver import make_discovery_resource, make_discovery_site
from skypty.keys import SecretKey, generate_keypair
from tests.vectors import load

V = load("disc_entry.json")
KEYS = {name: SecretKey.from_hex(k["sk"]) for name, k in V["keys"].items()}
ENTRY_CASES = ["client_entry", "client_entry_update", "server_entry", "client_entry_empty_delegated"]

# secp256k1 group order and generator, for reproducing a signature from its recorded nonce.
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
P = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F
G = (0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798,
     0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8)


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    if a[0] == b[0] and (a[1] + b[1]) % P == 0:
        return None
    if a == b:
        lam = 3 * a[0] * a[0] * pow(2 * a[1], -1, P) % P
    else:
        lam = (b[1] - a[1]) * pow(b[0] - a[0], -1, P) % P
    x = (lam * lam - a[0] - b[0]) % P
    return x, (lam * (a[0] - x) - a[1]) % P


def _mul(k, point):
    result = None
    while k:
        if k & 1:
            result = _add(result, point)
        point, k = _add(point, point), k >> 1
    return result


def sign_with_nonce(sk, digest, k):
    """Textbook ECDSA with a given nonce, low-S, plus the recovery id."""
    z, d = int.from_bytes(digest, "big"), int.from_bytes(sk.raw, "big")
    rx, ry = _mul(k, G)
    r = rx % N
    s = pow(k, -1, N) * (z + r * d) % N
    recid = ry & 1
    if s > N // 2:
        s, recid = N - s, recid ^ 1
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([recid])


def vector_entry(case):
    return entry_from_json(V[case]["posted_json"].encode())


@pytest.mark.parametrize("case", ENTRY_CASES)
def test_vector_entries_are_byte_exact(case):
    record = V[case]
    entry = vector_entry(case)
    assert entry.canonical_json() == record["signed_bytes"].encode()
    assert entry.to_json() == record["posted_json"].encode()
    entry.verify()  # the reference's signature verifies over our canonical bytes


@pytest.mark.parametrize("case", ENTRY_CASES)
def test_signature_reproduced_from_the_recorded_nonce(case):
    import hashlib

    record = V[case]
    entry = vector_entry(case)
    sk = next(k for k in KEYS.values() if k.public_key == entry.static)
    digest = hashlib.sha256(entry.canonical_json()).digest()
    assert digest.hex() == record["signature"]["signed_bytes_sha256"]
    sig = sign_with_nonce(sk, digest, int(record["signature"]["ecdsa_nonce_k"], 16))
    assert sig.hex() == record["signature"]["sig"]


def test_our_signatures_verify_and_tampering_is_caught():
    pk, sk = generate_keypair()
    entry = client_entry(pk, 3, 1700000000000000000, [generate_keypair()[0]]).signed(sk)
    entry.verify()
    with pytest.raises(EntryError):
        attr.evolve(entry, sequence=4).verify()


pks = st.builds(lambda: generate_keypair()[0])


@given(st.integers(0, 2**63), st.integers(0, 2**63 - 1), st.lists(st.just(None), max_size=3),
       st.one_of(st.none(), st.text(max_size=40)), st.integers(0, 2**31))
@settings(max_examples=50, deadline=None)
def test_round_trip(seq, ts, servers, address, sessions):
    pk, sk = generate_keypair()
    if address is None:
        entry = client_entry(pk, seq, ts, [generate_keypair()[0] for _ in servers])
    else:
        entry = server_entry(pk, seq, ts, address, sessions)
    entry = entry.signed(sk)
    again = entry_from_json(entry.to_json())
    assert again == entry
    again.verify()


@pytest.mark.parametrize("body", [
    b"", b"[]", b"null", b"{}", b'{"static": 5}', b'{"static": "02"}',
    b'{"static": "0272be63f72d86570361da6cc81ea96d47f587a6a433f63393a8a5555361d381d5", "sequence": -1}',
    b'{"static": "0272be63f72d86570361da6cc81ea96d47f587a6a433f63393a8a5555361d381d5", "sequence": 1e400}',
    b'{"static": "0272be63f72d86570361da6cc81ea96d47f587a6a433f63393a8a5555361d381d5", "client": []}',
    b'{"static": "0272be63f72d86570361da6cc81ea96d47f587a6a433f63393a8a5555361d381d5", "timestamp": 99999999999999999999999}',
    b"[" * 100000, b"{" + b" " * (10 * 1024 * 1024) + b"}",
])
def test_hostile_json_only_raises_entry_error(body):
    with pytest.raises(EntryError):
        entry_from_json(body)


@given(st.binary(max_size=300))
def test_random_bytes_only_raise_entry_error(body):
    with pytest.raises(EntryError):
        entry_from_json(body)


# -- the embedded discovery API -------------------------------------------------------

def render(root, method, path, body=b""):
    from io import BytesIO

    from twisted.web.resource import getChildForRequest

    segments = [s.encode() for s in path.lstrip("/").split("/")]
    request = DummyRequest(segments)
    request.method = method.encode()
    request.content = BytesIO(body)
    res = getChildForRequest(root, request)
    out = res.render(request)
    return request.responseCode or 200, out, request.responseHeaders.getRawHeaders(b"content-type")


class DiscoveryAPITests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1700000000.0)  # the vectors' timestamps
        self.root, self.store = make_discovery_resource(self.clock)

    def test_recorded_exchanges(self):
        for case in ("client_entry_post", "client_entry_get", "client_entry_update_post"):
            rec = V[case]
            method, path = rec["request_head"].split(" ")[:2]
            code, body, ctype = render(self.root, method, path, rec["request_body"].encode())
            status = int(rec["response_head_without_date"].split(" ")[1])
            self.assertEqual((code, body), (status, rec["response_body"].encode()), case)
            self.assertEqual(ctype, [b"application/json"])

    def test_stale_server_entry_is_refused_like_the_reference(self):
        self.clock.advance(120)
        rec = V["server_entry_post_rejected"]["exchange"]
        code, body, _ = render(self.root, "POST", "/dmsg-discovery/entry/", rec["request_body"].encode())
        self.assertEqual(code, 422)
        self.assertEqual(body, rec["response_body"].encode())

    def test_sequence_must_grow_and_bad_signatures_are_refused(self):
        pk, sk = generate_keypair()
        now = int(self.clock.seconds() * 1e9)
        first = client_entry(pk, 0, now, []).signed(sk)
        self.assertEqual(render(self.root, "POST", "/dmsg-discovery/entry/", first.to_json())[0], 200)
        code, body, _ = render(self.root, "POST", "/dmsg-discovery/entry/", first.to_json())
        self.assertEqual(code, 422)
        self.assertIn(b"sequence", body)
        forged = attr.evolve(client_entry(pk, 1, now, []).signed(sk), sequence=2)
        self.assertEqual(render(self.root, "POST", "/dmsg-discovery/entry/", forged.to_json())[0], 401)
        fresh_pk, fresh_sk = generate_keypair()
        nonzero = client_entry(fresh_pk, 5, now, []).signed(fresh_sk)
        self.assertEqual(render(self.root, "POST", "/dmsg-discovery/entry", nonzero.to_json())[0], 422)
        self.assertEqual(render(self.root, "POST", "/dmsg-discovery/entry/", b"x" * 70000)[0], 400)

    def test_entries_expire_after_three_minutes_and_servers_are_listed(self):
        spk, ssk = generate_keypair()
        now = int(self.clock.seconds() * 1e9)
        full = server_entry(spk, 0, now, "127.0.0.1:1", 0).signed(ssk)
        opk, osk = generate_keypair()
        free = server_entry(opk, 0, now, "127.0.0.1:2", 10).signed(osk)
        for e in (full, free):
            self.assertEqual(render(self.root, "POST", "/dmsg-discovery/entry/", e.to_json())[0], 200)
        avail = json.loads(render(self.root, "GET", "/dmsg-discovery/available_servers")[1])
        self.assertEqual([e["static"] for e in avail], [opk.hex()])
        self.assertEqual(len(json.loads(render(self.root, "GET", "/dmsg-discovery/all_servers")[1])), 2)
        self.clock.advance(179)
        self.assertEqual(render(self.root, "GET", "/dmsg-discovery/entry/" + spk.hex())[0], 200)
        self.clock.advance(1)
        code, body, _ = render(self.root, "GET", "/dmsg-discovery/entry/" + spk.hex())
        self.assertEqual((code, body), (404, b'{"message":"entry of public key is not found","code":404}'))


class DiscoveryClientTests(unittest.TestCase):
    """Our treq client against our server on a real loopback port."""

    def setUp(self):
        self.site = make_discovery_site(reactor)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.client = DiscoveryClient(f"http://127.0.0.1:{self.port.getHost().port}", reactor)

    @defer.inlineCallbacks
    def test_post_get_update(self):
        pk, sk = generate_keypair()
        now = int(reactor.seconds() * 1e9)
        yield self.client.post_entry(client_entry(pk, 0, now, []).signed(sk))
        got = yield self.client.get_entry(pk)
        self.assertEqual(got.sequence, 0)
        yield self.client.post_entry(client_entry(pk, 1, now + 1, []).signed(sk))
        self.assertEqual((yield self.client.get_entry(pk)).sequence, 1)
        err = yield self.assertFailure(self.client.post_entry(client_entry(pk, 1, now + 2, []).signed(sk)),
                                       DiscoveryError)
        self.assertEqual(err.status, 422)
        self.assertEqual((yield self.client.entries()), [pk.hex()])
        yield self.assertFailure(self.client.get_entry(generate_keypair()[0]), EntryNotFound)

    @defer.inlineCallbacks
    def test_unreachable_discovery_is_a_clear_error(self):
        port = self.port.getHost().port
        yield self.port.stopListening()
        client = DiscoveryClient(f"http://127.0.0.1:{port}", reactor)
        err = yield self.assertFailure(client.available_servers(), DiscoveryError)
        self.assertIn("unreachable", str(err))


class FakeDiscovery:
    def __init__(self):
        self.up = False
        self.posted = []
        self.stored = None

    def get_entry(self, pk):
        if not self.up:
            return defer.fail(DiscoveryError("down"))
        if self.stored is None:
            return defer.fail(EntryNotFound("not found", 404))
        return defer.succeed(self.stored)

    def post_entry(self, entry):
        if not self.up:
            return defer.fail(DiscoveryError("down"))
        entry.verify()
        self.posted.append(entry)
        self.stored = entry
        return defer.succeed(b"ok")


def test_keeper_backs_off_then_refreshes_every_minute():
    clock = task.Clock()
    clock.advance(1700000000)
    pk, sk = generate_keypair()
    fake = FakeDiscovery()
    keeper = EntryKeeper(fake, sk, lambda seq, ts: client_entry(pk, seq, ts, []), clock)
    keeper.start()
    clock.advance(0)
    delays = []
    for _ in range(8):  # down: 1, 2, 4, ... capped at 60
        delays.append(keeper._call.getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert fake.posted == []
    fake.up = True
    clock.advance(60)
    assert [e.sequence for e in fake.posted] == [0] and keeper.registered
    clock.advance(59)
    assert len(fake.posted) == 1
    clock.advance(1)
    assert [e.sequence for e in fake.posted] == [0, 1]
    assert fake.posted[1].timestamp > fake.posted[0].timestamp
    keeper.stop()
    clock.advance(600)
    assert len(fake.posted) == 2


def test_keeper_continues_an_existing_sequence():
    clock = task.Clock()
    pk, sk = generate_keypair()
    fake = FakeDiscovery()
    fake.up = True
    fake.stored = client_entry(pk, 41, 0, []).signed(sk)
    keeper = EntryKeeper(fake, sk, lambda seq, ts: client_entry(pk, seq, ts, []), clock)
    keeper.start()
    clock.advance(0)
    assert fake.posted[-1].sequence == 42

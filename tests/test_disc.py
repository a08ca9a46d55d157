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


def test_current_fields_are_signed_in_the_go_struct_order():
    """version, sequence, timestamp, static, client, client_type, server,
    signature, protocol; server: address, address_v6, address_udp,
    address_udp_v6, address_ws, address_wt, cert_hash_wt, cert_hash_wt_next,
    availableSessions, serverType, dht_bootstrap (each new one omitted when empty)."""
    pk = KEYS["server_S"].public_key
    entry = current_server_entry(pk, 1700000000000000000)
    assert entry.canonical_json() == (
        '{"version":"0.0.1","sequence":0,"timestamp":1700000000000000000,"static":"%s",'
        '"server":{"address":"127.0.0.1:30080","address_v6":"[::1]:30080","address_udp":"127.0.0.1:30080",'
        '"address_udp_v6":"[::1]:30080","address_ws":"wss://dmsg.example/dmsg",'
        '"address_wt":"https://127.0.0.1:8443/dmsg","cert_hash_wt":"%s","cert_hash_wt_next":"%s",'
        '"availableSessions":2048,"serverType":"community","dht_bootstrap":true},"protocol":"quic"}'
        % (pk.hex(), "ab" * 32, "cd" * 32)).encode()
    signed = entry.signed(KEYS["server_S"])
    assert signed.to_json().endswith(b'"dht_bootstrap":true},"signature":"%s","protocol":"quic"}'
                                     % signed.signature.encode())
    again = entry_from_json(signed.to_json())
    again.verify()
    assert again == signed
    cpk = KEYS["client_A"].public_key
    client = attr.evolve(client_entry(cpk, 3, 5, [pk]), client_type="visor", protocol="smux")
    assert client.canonical_json() == (
        '{"version":"0.0.1","sequence":3,"timestamp":5,"static":"%s","client":{"delegated_servers":["%s"]},'
        '"client_type":"visor","protocol":"smux"}' % (cpk.hex(), pk.hex())).encode()


def test_a_rewritten_server_type_breaks_the_signature_but_not_the_entry():
    entry = current_server_entry(KEYS["server_S"].public_key, 1700000000000000000).signed(KEYS["server_S"])
    served = entry.to_json().replace(b'"serverType":"community"', b'"serverType":"official"')
    fetched = entry_from_json(served)
    with pytest.raises(EntryError):
        fetched.verify()  # what the reference would see too; it never verifies fetched entries
    assert fetched.server.server_type == "official" and fetched.raw == served


def test_nil_and_empty_delegated_servers_are_signed_as_go_writes_them():
    pk, sk = generate_keypair()
    for written in (b'"client":{"delegated_servers":null}', b'"client":{"delegated_servers":[]}'):
        unsigned = b'{"version":"0.0.1","sequence":0,"timestamp":1,"static":"%s",%s}' % (pk.hex().encode(), written)
        sig = sk.sign(unsigned).hex().encode()
        entry_from_json(unsigned[:-1] + b',"signature":"%s"}' % sig).verify()
    missing = b'{"version":"0.0.1","sequence":0,"timestamp":1,"static":"%s","client":{}}' % pk.hex().encode()
    assert entry_from_json(missing).canonical_json() == missing.replace(b"{}", b'{"delegated_servers":null}')


@pytest.mark.parametrize("text, written", [
    ("plain", '"plain"'), ('q"b\\', '"q\\"b\\\\"'), ("a\nb\rc\td", '"a\\nb\\rc\\td"'),
    ("\x08\x0c\x01\x1f", '"\\u0008\\u000c\\u0001\\u001f"'), ("<&>", '"<&>"'),
    ("é€\U0001f600\x7f", '"é€\U0001f600\x7f"'),
])
def test_strings_are_written_as_json_iterator_writes_them(text, written):
    from skypty.dmsg.disc import go_string

    assert go_string(text) == written


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


def render_args(root, method, path, body, args):
    from io import BytesIO

    from twisted.web.resource import getChildForRequest

    request = DummyRequest([s.encode() for s in path.lstrip("/").split("/")])
    request.method = method.encode()
    request.args = args
    request.content = BytesIO(body)
    out = getChildForRequest(root, request).render(request)
    return request.responseCode or 200, out


def current_server_entry(pk, ts, **over):
    """A server entry as a current (2026) reference server builds it: every new field set."""
    from skypty.dmsg.disc import ServerInfo

    info = dict(address="127.0.0.1:30080", available_sessions=2048, address_v6="[::1]:30080",
                address_udp="127.0.0.1:30080", address_udp_v6="[::1]:30080",
                address_ws="wss://dmsg.example/dmsg", address_wt="https://127.0.0.1:8443/dmsg",
                cert_hash_wt="ab" * 32, cert_hash_wt_next="cd" * 32, server_type="community",
                dht_bootstrap=True)
    info.update(over)
    return attr.evolve(server_entry(pk, 0, ts, "x", 0), server=ServerInfo(**info), protocol="quic")


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

    def test_servers_are_listed_and_expire_two_minutes_after_their_last_post(self):
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
        self.clock.advance(60)  # free re-posts (servers do, every minute); full does not
        again = server_entry(opk, 1, int(self.clock.seconds() * 1e9), "127.0.0.1:2", 9).signed(osk)
        self.assertEqual(render(self.root, "POST", "/dmsg-discovery/entry/", again.to_json())[0], 200)
        self.clock.advance(59)
        self.assertEqual(render(self.root, "GET", "/dmsg-discovery/entry/" + spk.hex())[0], 200)
        self.clock.advance(1)  # 2 minutes after full's only post
        code, body, _ = render(self.root, "GET", "/dmsg-discovery/entry/" + spk.hex())
        self.assertEqual((code, body), (404, b'{"message":"entry of public key is not found","code":404}'))
        self.assertEqual(render(self.root, "GET", "/dmsg-discovery/entry/" + opk.hex())[0], 200)
        self.clock.advance(60)  # 2 minutes after free's last post
        self.assertEqual(render(self.root, "GET", "/dmsg-discovery/entry/" + opk.hex())[0], 404)
        self.assertEqual(render(self.root, "GET", "/dmsg-discovery/all_servers")[1], b"[]")

    def test_a_client_entry_posted_without_timeout_never_expires(self):
        pk, sk = generate_keypair()
        entry = client_entry(pk, 0, int(self.clock.seconds() * 1e9), []).signed(sk)
        self.assertEqual(render(self.root, "POST", "/dmsg-discovery/entry/", entry.to_json())[0], 200)
        self.clock.advance(24 * 3600 + 1)
        code, body, _ = render(self.root, "GET", "/dmsg-discovery/entry/" + pk.hex())
        self.assertEqual((code, body), (200, entry.to_json()))
        self.assertEqual(json.loads(render(self.root, "GET", "/dmsg-discovery/entries")[1]), [pk.hex()])

    def test_a_client_entry_posted_with_timeout_lasts_three_minutes_after_its_last_post(self):
        pk, sk = generate_keypair()
        post = lambda seq: render_args(self.root, "POST", "/dmsg-discovery/entry/",  # noqa: E731
                                       client_entry(pk, seq, int(self.clock.seconds() * 1e9), []).signed(sk).to_json(),
                                       {b"timeout": [b"true"]})[0]
        self.assertEqual(post(0), 200)
        self.clock.advance(120)
        self.assertEqual(post(1), 200)
        self.clock.advance(179)
        self.assertEqual(render(self.root, "GET", "/dmsg-discovery/entry/" + pk.hex())[0], 200)
        self.clock.advance(1)
        self.assertEqual(render(self.root, "GET", "/dmsg-discovery/entry/" + pk.hex())[0], 404)

    def test_the_store_stays_bounded(self):
        from skypty.dmsg.discserver import EntryStore

        store = EntryStore(self.clock, max_entries=3)
        now = int(self.clock.seconds() * 1e9)
        keys = [generate_keypair() for _ in range(4)]
        for (pk, sk), source in zip(keys[:3], "abc"):  # three lone strangers: none is ours to displace
            store.put(server_entry(pk, 0, now, "127.0.0.1:1", 1).signed(sk), source=source)
        with pytest.raises(EntryError, match="full"):
            store.put(client_entry(keys[3][0], 0, now, []).signed(keys[3][1]), source="d")
        store.put(server_entry(keys[0][0], 1, now, "127.0.0.1:1", 1).signed(keys[0][1]))  # an update fits
        self.clock.advance(120)  # servers expire: room again
        store.put(client_entry(keys[3][0], 0, now, []).signed(keys[3][1]))
        self.assertEqual(len(store), 1)
        for _ in range(20):  # re-posts do not grow the deadline heap without bound
            store.put(server_entry(keys[1][0], 0, now, "127.0.0.1:1", 1).signed(keys[1][1]))
        self.assertLessEqual(len(store._deadlines), 2 * 3 + 1)

    def test_current_entries_round_trip_byte_for_byte(self):
        pk, sk = generate_keypair()
        now = int(self.clock.seconds() * 1e9)
        signed = current_server_entry(pk, now).signed(sk)
        # Unknown fields and the poster's own spacing survive too (they are not signed, as in Go).
        body = signed.to_json()[:-1] + b', "future_field": {"a": [1, 2]} }'
        self.assertEqual(render(self.root, "POST", "/dmsg-discovery/entry/", body)[0], 200)
        self.assertEqual(render(self.root, "GET", "/dmsg-discovery/entry/" + pk.hex())[1], body)
        self.assertEqual(render(self.root, "GET", "/dmsg-discovery/all_servers")[1], b"[" + body + b"]")
        self.assertEqual(render(self.root, "GET", "/dmsg-discovery/available_servers")[1], b"[" + body + b"]")
        cpk, csk = generate_keypair()
        client = attr.evolve(client_entry(cpk, 0, now, [pk]), client_type="visor", protocol="smux").signed(csk)
        self.assertEqual(render(self.root, "POST", "/dmsg-discovery/entry/", client.to_json())[0], 200)
        self.assertEqual(render(self.root, "GET", "/dmsg-discovery/entry/" + cpk.hex())[1], client.to_json())
        # Tampering with a signed field is still caught.
        forged = client.to_json().replace(b'"visor"', b'"other"')
        fpk_entry = entry_from_json(forged)
        with pytest.raises(EntryError):
            fpk_entry.verify()

    def test_get_and_head_on_the_post_route_are_405(self):
        for method in ("GET", "HEAD"):
            for path in ("/dmsg-discovery/entry/", "/dmsg-discovery/entry"):
                self.assertEqual(render(self.root, method, path)[0], 405, (method, path))

    def test_hostile_posts_get_one_clear_status(self):
        pk, sk = generate_keypair()
        good = client_entry(pk, 0, int(self.clock.seconds() * 1e9), []).signed(sk).to_json()
        for body in (good[:-1] + b',"x":NaN}', good.replace(b'"sequence":0', b'"sequence":0.5'),
                     good[:-1] + b',"client_type":7}', good[:-1] + b',"server":{"address":"a:1","dht_bootstrap":"yes"}}',
                     b"\xff" + good):
            code, out, _ = render(self.root, "POST", "/dmsg-discovery/entry/", body)
            self.assertEqual(code, 400, body)
        self.assertEqual(render(self.root, "GET", "/dmsg-discovery/entries")[1], b"[]")


class LiveDiscovery:
    """Our server on a real loopback port, and our treq client to it."""

    def setUp(self):
        self.site = make_discovery_site(reactor)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.client = DiscoveryClient(f"http://127.0.0.1:{self.port.getHost().port}", reactor)


class DiscoveryClientTests(LiveDiscovery, unittest.TestCase):
    """Our treq client against our server on a real loopback port."""

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
    def test_fetched_server_entries_are_kept_whatever_their_signature(self):
        pk, sk = generate_keypair()
        entry = current_server_entry(pk, int(reactor.seconds() * 1e9)).signed(sk)
        rewritten = entry.to_json().replace(b'"serverType":"community"', b'"serverType":"official"')
        self.site.store.put(entry_from_json(rewritten))  # as the current discovery serves it
        servers = yield self.client.available_servers()
        self.assertEqual([(e.static, e.server.server_type, e.server.address_wt) for e in servers],
                         [(pk, "official", "https://127.0.0.1:8443/dmsg")])
        self.assertEqual(json.loads(servers[0].raw), json.loads(rewritten))
        self.assertEqual((yield self.client.get_entry(pk)).server.server_type, "official")

    @defer.inlineCallbacks
    def test_fetched_client_entries_must_verify(self):
        pk, sk = generate_keypair()
        now = int(reactor.seconds() * 1e9)
        good = attr.evolve(client_entry(pk, 0, now, []), client_type="visor", protocol="smux").signed(sk)
        yield self.client.post_entry(good)
        got = yield self.client.get_entry(pk)
        self.assertEqual((got.client_type, got.protocol), ("visor", "smux"))
        fpk, fsk = generate_keypair()
        forged = entry_from_json(client_entry(fpk, 0, now, []).signed(fsk).to_json().replace(b'"sequence":0',
                                                                                             b'"sequence":7'))
        self.site.store.put(forged)
        yield self.assertFailure(self.client.get_entry(fpk), EntryError)

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


# -- a hostile network (#25 items 4 and 7) ---------------------------------------------------

def render_from(root, method, path, body=b"", host="10.0.0.1", headers=()):
    """render() from a given source address, with request headers."""
    from io import BytesIO

    from twisted.internet.address import IPv4Address
    from twisted.web.resource import getChildForRequest

    request = DummyRequest([s.encode() for s in path.lstrip("/").split("/")])
    request.method = method.encode()
    request.content = BytesIO(body)
    request.client = IPv4Address("TCP", host, 40000)
    for name, value in headers:
        request.requestHeaders.addRawHeader(name, value)
    out = getChildForRequest(root, request).render(request)
    return request.responseCode or 200, out


def delete_proof(root, sk, body):
    code, out, _ = render(root, "GET", "/security/nonces/" + sk.public_key.hex())
    assert code == 200, out
    nonce = str(json.loads(out)["next_nonce"]).encode()
    return [(b"SW-Public", sk.public_key.hex().encode()), (b"SW-Nonce", nonce),
            (b"SW-Sig", sk.sign(body + nonce).hex().encode())]


class HostileDiscoveryTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1700000000.0)
        self.root, self.store = make_discovery_resource(self.clock)
        self.now = int(self.clock.seconds() * 1e9)

    def post(self, entry, host="10.0.0.1", body=None):
        return render_from(self.root, "POST", "/dmsg-discovery/entry/",
                           entry.to_json() if body is None else body, host)

    def test_a_fetched_entry_sent_back_does_not_delete_it(self):
        """#25 item 4: GET the public entry, DELETE with it: used to answer 200."""
        pk, sk = generate_keypair()
        self.assertEqual(self.post(client_entry(pk, 0, self.now, []).signed(sk))[0], 200)
        public = render(self.root, "GET", "/dmsg-discovery/entry/" + pk.hex())[1]
        code, out = render_from(self.root, "DELETE", "/dmsg-discovery/entry", public, host="10.6.6.6")
        self.assertEqual(code, 401, out)
        self.assertIn(b"SW-Nonce", out)
        self.assertEqual(render(self.root, "GET", "/dmsg-discovery/entry/" + pk.hex())[0], 200)

    def test_a_signed_delete_works_once_and_its_replay_does_not(self):
        pk, sk = generate_keypair()
        body = client_entry(pk, 0, self.now, []).signed(sk).to_json()
        self.post(entry_from_json(body))
        proof = delete_proof(self.root, sk, body)
        self.assertEqual(render_from(self.root, "DELETE", "/dmsg-discovery/entry", body, headers=proof)[0], 200)
        self.assertEqual(render(self.root, "GET", "/dmsg-discovery/entry/" + pk.hex())[0], 404)
        # The owner comes back; the captured delete is replayed: refused (its nonce is spent).
        self.post(client_entry(pk, 0, self.now, []).signed(sk))
        code, out = render_from(self.root, "DELETE", "/dmsg-discovery/entry", body, headers=proof)
        self.assertEqual(code, 401, out)
        self.assertEqual(render(self.root, "GET", "/dmsg-discovery/entry/" + pk.hex())[0], 200)

    def test_proof_by_another_key_or_for_another_body_or_a_stale_nonce_is_refused(self):
        pk, sk = generate_keypair()
        opk, osk = generate_keypair()
        body = client_entry(pk, 0, self.now, []).signed(sk).to_json()
        self.post(entry_from_json(body))
        self.post(client_entry(opk, 0, self.now, []).signed(osk))
        other = client_entry(opk, 0, self.now, []).signed(osk).to_json()
        cases = {
            "another key": [(b"SW-Public", opk.hex().encode())] + delete_proof(self.root, osk, body)[1:],
            "another body": delete_proof(self.root, sk, other),
            "a made-up nonce": [(b"SW-Public", pk.hex().encode()), (b"SW-Nonce", b"1"),
                                (b"SW-Sig", sk.sign(body + b"1").hex().encode())],
            "a bad signature": delete_proof(self.root, sk, body)[:2] + [(b"SW-Sig", b"zz")],
        }
        for why, proof in cases.items():
            code, _ = render_from(self.root, "DELETE", "/dmsg-discovery/entry", body, headers=proof)
            self.assertEqual(code, 401, why)
        proof = delete_proof(self.root, sk, body)
        self.clock.advance(61)  # nonces are short-lived
        self.assertEqual(render_from(self.root, "DELETE", "/dmsg-discovery/entry", body, headers=proof)[0], 401)
        self.assertEqual(render(self.root, "GET", "/dmsg-discovery/entry/" + pk.hex())[0], 200)
        # No nonces for keys that have no entry (the nonce book stays as small as the store).
        self.assertEqual(render(self.root, "GET", "/security/nonces/" + generate_keypair()[0].hex())[0], 404)

    def test_an_entry_padded_with_unknown_fields_is_refused(self):
        """#25 item 7: ~60 KB of unknown fields per entry used to be stored."""
        from skypty.dmsg.discserver import MAX_ENTRY_BYTES

        pk, sk = generate_keypair()
        signed = client_entry(pk, 0, self.now, []).signed(sk).to_json()
        padded = signed[:-1] + b',"pad":"' + b"x" * 60_000 + b'"}'
        code, out = self.post(None, body=padded)
        self.assertEqual(code, 413, out)
        fits = signed[:-1] + b',"pad":"' + b"x" * (MAX_ENTRY_BYTES - len(signed) - 20) + b'"}'
        self.assertEqual(self.post(None, body=fits)[0], 200)

    def test_a_flood_of_fresh_keys_from_one_address_is_rate_limited(self):
        from skypty.dmsg.discserver import NEW_KEY_BURST

        codes = [self.post(client_entry(pk, 0, self.now, []).signed(sk))[0]
                 for pk, sk in (generate_keypair() for _ in range(NEW_KEY_BURST + 20))]
        self.assertEqual(codes.count(200), NEW_KEY_BURST)
        self.assertEqual(codes.count(429), 20)
        # Another address is not held back by the flood.
        pk, sk = generate_keypair()
        self.assertEqual(self.post(client_entry(pk, 0, self.now, []).signed(sk), host="10.0.0.2")[0], 200)

    def test_a_full_store_displaces_the_flood_never_a_host_that_keeps_its_entry(self):
        from skypty.dmsg.discserver import EntryStore

        store = EntryStore(self.clock, max_entries=100)
        root, _ = make_discovery_resource(self.clock, store=store, limits=(_Unlimited(), _Unlimited()))
        post = lambda e, host: render_from(root, "POST", "/dmsg-discovery/entry/", e.to_json(), host)[0]  # noqa: E731
        hosts = [generate_keypair() for _ in range(3)]
        for i, (pk, sk) in enumerate(hosts):  # legitimate hosts, each from its own address
            self.assertEqual(post(client_entry(pk, 0, self.now, []).signed(sk), f"192.0.2.{i}"), 200)
        # One host updates its entry (a session changed): it is no stranger any more.
        self.assertEqual(post(client_entry(hosts[0][0], 1, self.now, []).signed(hosts[0][1]), "192.0.2.0"), 200)
        for _ in range(500):  # the flood, from fresh keys
            pk, sk = generate_keypair()
            self.assertEqual(post(client_entry(pk, 0, self.now, []).signed(sk), "10.6.6.6"), 200)
        self.assertEqual(len(store), 100)
        for pk, _ in hosts:
            self.assertIsNotNone(store.get(pk))
        # A new legitimate host still gets in: the flood gives way.
        pk, sk = generate_keypair()
        self.assertEqual(post(client_entry(pk, 0, self.now, []).signed(sk), "192.0.2.9"), 200)
        self.assertIsNotNone(store.get(pk))
        # Updates are never refused for space.
        self.assertEqual(post(client_entry(hosts[1][0], 1, self.now, []).signed(hosts[1][1]), "192.0.2.1"), 200)

    def test_the_store_is_bounded_in_bytes(self):
        from skypty.dmsg.discserver import ENTRY_OVERHEAD, EntryStore

        store = EntryStore(self.clock, max_bytes=50 * (4096 + ENTRY_OVERHEAD))
        for _ in range(200):
            pk, sk = generate_keypair()
            signed = client_entry(pk, 0, self.now, []).signed(sk).to_json()
            store.put(entry_from_json(signed[:-1] + b',"pad":"' + b"x" * 4000 + b'"}'), source="10.6.6.6")
        self.assertLessEqual(store.bytes, store.max_bytes)
        self.assertLessEqual(len(store), 50)


class _Unlimited:
    def allow(self, source):
        return True


class SignedDeleteClientTests(LiveDiscovery, unittest.TestCase):
    """skypty's own client deletes with the proof, over real HTTP."""

    @defer.inlineCallbacks
    def test_delete_entry_carries_the_proof(self):
        pk, sk = generate_keypair()
        entry = client_entry(pk, 0, int(reactor.seconds() * 1e9), []).signed(sk)
        yield self.client.post_entry(entry)
        other_pk, other_sk = generate_keypair()
        err = yield self.assertFailure(self.client.delete_entry(entry, other_sk), DiscoveryError)
        self.assertIn(err.status, (401, 404))
        yield self.client.delete_entry(entry, sk)
        yield self.assertFailure(self.client.get_entry(pk), EntryNotFound)

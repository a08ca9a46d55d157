"""Fuzz: discovery entries (entry_from_json / entry_from_object, verify,
validate) and the discovery HTTP API (skypty.dmsg.discserver resources
driven with twisted.web's DummyRequest)."""

import json
from io import BytesIO

from hypothesis import example, given, strategies as st
from twisted.internet import task
from twisted.web.resource import getChildForRequest
from twisted.web.server import UnsupportedMethod
from twisted.web.test.requesthelper import DummyRequest

from skypty.dmsg.disc import (
    MAX_ENTRY_JSON, EntryError, client_entry, entry_from_json, entry_from_object, server_entry,
)
from skypty.dmsg.discserver import make_discovery_resource
from tests.fuzz import fuzz, only
from tests.fuzz.strategies import PUBLIC_KEYS, SECRET_KEYS, edits, mutate
from tests.vectors import load

NOW = 1700000000.0  # the vectors' time
NOW_NS = int(NOW * 1e9)
_V = load("disc_entry.json")
SEED_BODIES = [_V["client_entry_post"]["request_body"].encode(), _V["server_entry_post_rejected"]["exchange"][
    "request_body"].encode(), _V["client_entry_empty_delegated"]["signed_bytes"].encode()]

KEYS = ["version", "sequence", "timestamp", "static", "client", "server", "signature", "client_type", "protocol",
        "delegated_servers", "address", "availableSessions", "serverType", "dht_bootstrap", "x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=30),
                    st.sampled_from([p.hex() for p in PUBLIC_KEYS] + ["0.0.1", "", "00" * 33, "zz" * 33]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=6)), max_leaves=10)
client_objects = st.dictionaries(st.sampled_from(["delegated_servers", "x"]),
                                 st.one_of(scalars, st.lists(scalars, max_size=3)), max_size=2)
server_objects = st.dictionaries(st.sampled_from(["address", "availableSessions", "serverType", "dht_bootstrap",
                                                  "address_ws", "x"]), scalars, max_size=4)
entry_objects = st.fixed_dictionaries(
    {"static": st.one_of(st.sampled_from([p.hex() for p in PUBLIC_KEYS]), scalars)},
    optional={**{k: scalars for k in KEYS if k != "static"},
              "client": st.one_of(client_objects, scalars), "server": st.one_of(server_objects, scalars)})


def json_bytes(value):
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


bodies = st.one_of(
    entry_objects.map(json_bytes),
    json_values.map(json_bytes),
    st.tuples(st.sampled_from(SEED_BODIES), edits).map(lambda s: mutate(*s)),
    st.binary(max_size=300),
)


def check_entry(body):
    """Parse, verify, validate: each step succeeds or raises EntryError; what
    parses serialises again, and that JSON is a fixed point (fields this code
    does not know are not written back)."""
    with only(EntryError):
        entry = entry_from_json(body)
        again = entry_from_json(entry.to_json())
        assert again.to_json() == entry.to_json()
        with only(EntryError):
            entry.verify()
        with only(EntryError):
            entry.validate(NOW_NS)
        with only(EntryError):
            entry.validate_iteration(again)


@fuzz(120)
@given(bodies)
@example(b'{"static":"' + PUBLIC_KEYS[0].hex().encode() + b'","version":"\\ud800"}')  # a lone surrogate
@example(b'{"static":"' + PUBLIC_KEYS[0].hex().encode() + b'","timestamp":NaN}')
@example(b"[" * 100000)
def test_entry_json(body):
    check_entry(body)


@fuzz(60)
@given(json_values)
def test_entry_object(obj):
    with only(EntryError):
        entry_from_object(obj)


signers = st.integers(0, len(SECRET_KEYS) - 1)
safe_text = st.text(max_size=60)


def make_entry(signer, seq, ts, servers, address, sessions):
    pk = SECRET_KEYS[signer].public_key
    if address is None:
        entry = client_entry(pk, seq, ts, [PUBLIC_KEYS[i] for i in servers])
    else:
        entry = server_entry(pk, seq, ts, address, sessions)
    return entry.signed(SECRET_KEYS[signer])


good_entries = st.builds(make_entry, signers, st.integers(0, 2**63 - 1), st.integers(-2**63, 2**63 - 1),
                         st.lists(st.integers(0, len(PUBLIC_KEYS) - 1), max_size=3),
                         st.one_of(st.none(), safe_text), st.integers(0, 2**31))


@fuzz(150)
@given(good_entries)
def test_entry_round_trip(entry):
    again = entry_from_json(entry.to_json())
    assert again == entry
    again.verify()


# -- the HTTP API -------------------------------------------------------------------

def render(root, method, path, body, headers=()):
    request = DummyRequest([s.encode("utf-8", "surrogatepass") for s in path.lstrip("/").split("/")])
    request.method = method
    request.content = BytesIO(body)
    for name, value in headers:
        request.requestHeaders.addRawHeader(name, value)
    res = getChildForRequest(root, request)
    try:
        out = res.render(request)
    except UnsupportedMethod:
        return 405, b""
    return request.responseCode or 200, out


API_PATHS = ["/dmsg-discovery/entry/", "/dmsg-discovery/entry", "/dmsg-discovery/available_servers",
             "/dmsg-discovery/all_servers", "/dmsg-discovery/entries", "/health", "/security/nonces/"]
paths = st.one_of(st.sampled_from(API_PATHS),
                  st.sampled_from(PUBLIC_KEYS).map(lambda p: "/security/nonces/" + p.hex()),
                  st.sampled_from(PUBLIC_KEYS).map(lambda p: "/dmsg-discovery/entry/" + p.hex()),
                  st.text(max_size=70).map(lambda t: "/dmsg-discovery/entry/" + t))
requests = st.lists(st.tuples(
    st.sampled_from([b"GET", b"POST", b"DELETE", b"PUT", b"HEAD"]), paths,
    st.one_of(bodies, good_entries.map(lambda e: e.to_json()))), min_size=1, max_size=4)


@fuzz(60)
@given(requests)
@example([(b"POST", "/dmsg-discovery/entry/", b"{" + b" " * MAX_ENTRY_JSON + b"}")])
@example([(b"GET", "/dmsg-discovery/entry/\udcff", b"")])
# HEAD reached Resource.render_HEAD -> render_GET, which EntryResource lacked: a 500 and a traceback
@example([(b"HEAD", "/dmsg-discovery/entry/", b""), (b"HEAD", "/dmsg-discovery/entry", b"")])
def test_discovery_api(reqs):
    clock = task.Clock()
    clock.advance(NOW)
    root, store = make_discovery_resource(clock)
    for method, path, body in reqs:
        code, out = render(root, method, path, body)
        assert code in (200, 400, 401, 404, 405, 413, 422), (code, out)
        if code != 405:
            doc = json.loads(out)  # every answer is JSON
            if code >= 300:
                assert isinstance(doc, dict) and isinstance(doc.get("message"), str)
            elif path.startswith("/dmsg-discovery/entry/") and method == b"GET":
                entry = entry_from_json(out)
                assert entry.static.hex() == path.rsplit("/", 1)[1].lower()
            elif path.endswith("_servers"):
                assert all(entry_from_object(item).server is not None for item in doc)
        clock.advance(1)
    for entry in store.all():  # only what verified was stored
        entry.verify()


@fuzz(100)
@given(good_entries)
def test_discovery_api_round_trip(entry):
    clock = task.Clock()
    clock.advance(NOW)
    root, _ = make_discovery_resource(clock)
    entry = entry if entry.server is None else make_entry_at(entry, NOW_NS)
    code, out = render(root, b"POST", "/dmsg-discovery/entry/", entry.to_json())
    if entry.sequence != 0 or (entry.server is not None and not entry.server.address):
        assert code == 422
        return
    assert code == 200, out
    code, out = render(root, b"GET", "/dmsg-discovery/entry/" + entry.static.hex(), b"")
    assert code == 200 and entry_from_json(out) == entry
    body = entry.to_json()
    code, out = render(root, b"DELETE", "/dmsg-discovery/entry", body)
    assert code == 401  # the public entry sent back is no proof of the key
    code, out = render(root, b"GET", "/security/nonces/" + entry.static.hex(), b"")
    assert code == 200
    nonce = str(json.loads(out)["next_nonce"]).encode()
    sk = next(k for k in SECRET_KEYS if k.public_key == entry.static)
    proof = [(b"SW-Public", entry.static.hex().encode()), (b"SW-Nonce", nonce),
             (b"SW-Sig", sk.sign(body + nonce).hex().encode())]
    code, out = render(root, b"DELETE", "/dmsg-discovery/entry", body, proof)
    assert code == 200
    code, out = render(root, b"DELETE", "/dmsg-discovery/entry", body, proof)
    assert code == 401  # the same proof twice: a replay
    assert render(root, b"GET", "/dmsg-discovery/entry/" + entry.static.hex(), b"")[0] == 404


def make_entry_at(entry, ts):
    """A server entry must carry the current time to be taken; sequence 0 half the time."""
    signer = PUBLIC_KEYS.index(entry.static)
    return make_entry(signer, entry.sequence % 2 * entry.sequence, ts, [], entry.server.address,
                      entry.server.available_sessions)


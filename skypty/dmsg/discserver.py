"""The embedded dmsg discovery service (the reference's HTTP API, in memory).

Lifetimes follow the reference discovery: a client entry posted without
``?timeout=true`` never expires (current clients post only when their
sessions change); posted with it, it lasts 3 minutes after its last post;
a server entry lasts 2 minutes after its last post (servers post every
minute).  Posted entries are checked like the reference checks them
(signature over the current field list, version, server timestamps, a
growing sequence) and are served back exactly as posted: fields this code
does not know survive the round trip byte for byte.

A hostile network (issue #25):

* DELETE needs proof that the request is fresh and comes from the key's
  owner.  The reference discovery deletes on a signed *entry*, and an entry
  is public (GET it, send it back, the entry is gone), so skypty asks for
  the proof the reference's own ``httpauth`` middleware uses elsewhere: a
  nonce from ``GET /security/nonces/{pk}`` and the headers ``SW-Public``,
  ``SW-Nonce`` and ``SW-Sig`` (the key's signature over the body followed by
  the nonce in decimal).  The nonce is random, single-use and short-lived,
  so a captured request cannot be replayed.  A bare entry (what a reference
  client sends at shutdown) is refused with 401: its entry then ends as a
  crashed client's would (a server's after 2 minutes).
* An entry is at most ``MAX_ENTRY_BYTES`` (the reference stores only the
  fields it knows, re-encoded: well under 1 KB; skypty keeps unknown fields,
  so it caps them instead), posts are rate-limited per source address, and
  the store is bounded in entries and in bytes.  When full, a new key may
  only displace a *stranger* (an entry posted once and never updated) of
  the source that holds the most of them, newest first; an existing key's
  updates are never refused for space.  So a flood displaces itself, never
  a host that keeps its entry up to date.
"""

import heapq
import json
import os

from twisted.logger import Logger
from twisted.web import resource

from skypty.dmsg.disc import EntryError, entry_from_json
from skypty.keys import InvalidKey, PublicKey
from skypty.web.httpguard import address_key

CLIENT_TIMEOUT_TTL = 180.0   # a client entry posted with ?timeout=true
SERVER_TTL = 120.0           # a server entry (2 x the servers' update interval)
ENTRY_TTL = CLIENT_TIMEOUT_TTL  # the old name
MAX_BODY = 64 * 1024
MAX_ENTRY_BYTES = 8 * 1024     # one posted entry (64 delegated servers fit in 5 KB)
MAX_ENTRIES = 100_000
MAX_STORE_BYTES = 64 * 1024 * 1024  # all entries, counted with ENTRY_OVERHEAD each
ENTRY_OVERHEAD = 1024          # what a small entry costs in Python objects besides its JSON
# Posts per source address (an IPv4 address, an IPv6 /64): token buckets.
POST_BURST, POST_RATE = 120, 10.0       # any post
NEW_KEY_BURST, NEW_KEY_RATE = 32, 0.5   # posts that create an entry for a key not yet here
MAX_SOURCES = 10_000                    # buckets kept (full ones are dropped first)
NONCE_TTL = 60.0                        # a delete nonce is good this long, once
MAX_NONCES = 10_000


class _Held:
    __slots__ = ("entry", "expires", "serial", "size", "source", "refreshed")

    def __init__(self, entry, expires, serial, size, source, refreshed):
        self.entry, self.expires, self.serial = entry, expires, serial
        self.size, self.source, self.refreshed = size, source, refreshed


class EntryStore:
    """pk -> entry, each with its deadline (or none).  Expiry is lazy: a
    heap of deadlines is drained on each access, so a big store costs
    nothing per request beyond what actually expired.

    Bounded in entries and bytes.  An entry that was posted once and never
    updated is a *stranger*; when full, a new key displaces the newest
    stranger of the source holding the most of them (its own source's if
    that is the biggest, anyone's only if that source holds more than
    one), and is refused otherwise.  Updates are never refused for space."""

    def __init__(self, clock, max_entries=MAX_ENTRIES, client_timeout_ttl=CLIENT_TIMEOUT_TTL,
                 server_ttl=SERVER_TTL, max_bytes=MAX_STORE_BYTES):
        self.clock = clock
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.client_timeout_ttl = client_timeout_ttl
        self.server_ttl = server_ttl
        self.bytes = 0
        self.evicted = 0
        self._entries = {}    # pk -> _Held
        self._deadlines = []  # heap of (expires_at, serial, pk); superseded ones are skipped
        self._strangers = {}  # source -> {pk: None}, oldest first
        self._serial = 0

    def _current(self, item):
        expires, serial, pk = item
        held = self._entries.get(pk)
        return held is not None and held.serial == serial

    def _expire(self):
        now = self.clock.seconds()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)
            if self._current(item):
                self._remove(item[2])

    def _remove(self, pk):
        held = self._entries.pop(pk, None)
        if held is None:
            return
        self.bytes -= held.size
        if not held.refreshed:
            self._forget_stranger(held.source, pk)

    def _forget_stranger(self, source, pk):
        mine = self._strangers.get(source)
        if mine is not None:
            mine.pop(pk, None)
            if not mine:
                del self._strangers[source]

    def lifetime(self, entry, timeout=False):
        """Seconds this entry lives after its post, or None for ever."""
        if entry.server is not None:
            return self.server_ttl
        return self.client_timeout_ttl if timeout else None

    def get(self, pk):
        self._expire()
        item = self._entries.get(pk)
        return item.entry if item else None

    @staticmethod
    def size_of(entry):
        # Twice the JSON: the posted bytes are kept to serve them back as they
        # were, and the parsed entry keeps its unknown fields once more.
        return 2 * len(entry.raw if entry.raw is not None else entry.to_json()) + ENTRY_OVERHEAD

    def _full(self, adding):
        return len(self._entries) >= self.max_entries or self.bytes + adding > self.max_bytes

    def _make_room(self, source, adding):
        while self._full(adding):
            if not self._strangers:
                return False
            victim = max(self._strangers, key=lambda s: (len(self._strangers[s]), s == source))
            if victim != source and len(self._strangers[victim]) < 2:
                return False  # only lone strangers from other sources: not ours to displace
            pk = next(reversed(self._strangers[victim]))  # the newest
            self._remove(pk)
            self.evicted += 1
        return True

    def put(self, entry, timeout=False, source=None):
        self._expire()
        size = self.size_of(entry)
        held = self._entries.get(entry.static)
        if held is None and not self._make_room(source, size):
            raise EntryError("discovery is full")
        ttl = self.lifetime(entry, timeout)
        expires = None if ttl is None else self.clock.seconds() + ttl
        self._serial += 1
        if held is None:
            self._entries[entry.static] = _Held(entry, expires, self._serial, size, source, False)
            self._strangers.setdefault(source, {})[entry.static] = None
            self.bytes += size
        else:
            if not held.refreshed:  # its owner keeps it up to date: never displaced for space
                self._forget_stranger(held.source, entry.static)
            self.bytes += size - held.size
            held.entry, held.expires, held.serial, held.size, held.refreshed = (
                entry, expires, self._serial, size, True)
        if expires is not None:
            heapq.heappush(self._deadlines, (expires, self._serial, entry.static))
            if len(self._deadlines) > 2 * self.max_entries:  # re-posts leave superseded deadlines behind
                self._deadlines = [item for item in self._deadlines if self._current(item)]
                heapq.heapify(self._deadlines)

    def delete(self, pk):
        self._remove(pk)

    def all(self):
        self._expire()
        return [held.entry for held in self._entries.values()]

    def __len__(self):
        self._expire()
        return len(self._entries)


class SourceLimiter:
    """Token buckets per source address: *burst* at once, then *rate* a
    second.  At most *max_sources* buckets are kept; full ones (they carry
    no memory of anything) go first, then the oldest."""

    def __init__(self, clock, burst, rate, max_sources=MAX_SOURCES):
        self.clock, self.burst, self.rate, self.max_sources = clock, burst, rate, max_sources
        self._buckets = {}  # source -> (tokens, at)

    def _level(self, source, now):
        tokens, at = self._buckets.get(source, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def allow(self, source):
        now = self.clock.seconds()
        tokens = self._level(source, now)
        if tokens < 1:
            return False
        self._buckets.pop(source, None)
        self._buckets[source] = (tokens - 1, now)
        if len(self._buckets) > self.max_sources:
            self._trim(now)
        return True

    def _trim(self, now):
        for source in [s for s in self._buckets if self._level(s, now) >= self.burst]:
            del self._buckets[source]
        while len(self._buckets) > self.max_sources:
            del self._buckets[next(iter(self._buckets))]


class NonceBook:
    """Delete nonces: random, single-use, NONCE_TTL seconds, one per key."""

    def __init__(self, clock, ttl=NONCE_TTL, max_nonces=MAX_NONCES):
        self.clock, self.ttl, self.max_nonces = clock, ttl, max_nonces
        self._nonces = {}  # pk -> (nonce, issued at), oldest first

    def issue(self, pk):
        now = self.clock.seconds()
        held = self._nonces.get(pk)
        if held is not None and now - held[1] < self.ttl:
            return held[0]
        self._nonces.pop(pk, None)
        nonce = int.from_bytes(os.urandom(8), "big") >> 1  # fits Go's uint64 and int64 alike
        self._nonces[pk] = (nonce, now)
        while len(self._nonces) > self.max_nonces:
            del self._nonces[next(iter(self._nonces))]
        return nonce

    def current(self, pk):
        held = self._nonces.get(pk)
        if held is None or self.clock.seconds() - held[1] >= self.ttl:
            return None
        return held[0]

    def spend(self, pk):
        self._nonces.pop(pk, None)


def source_of(request):
    """The rate-limit key of a request's sender."""
    return address_key(request.getClientAddress())


def raw_json(entry):
    """The entry's JSON as it was posted (our own entries: as we write them)."""
    return entry.raw.strip() if entry.raw is not None else entry.to_json()


def json_list(entries):
    return b"[" + b",".join(raw_json(e) for e in entries) + b"]"


def _reply(request, code, obj):
    body = json.dumps(obj, separators=(",", ":")).encode()
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return body


def _message(request, code, message):
    return _reply(request, code, {"message": message, "code": code})


def _read_body(request):
    # The site already refused bodies over MAX_BODY before reading them; this
    # check keeps the resource safe on its own (other sites, tests).
    data = request.content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise EntryError("error bad input")
    return data


class EntryResource(resource.Resource):
    """/dmsg-discovery/entry[/] and /dmsg-discovery/entry/{pk}."""

    log = Logger()

    def __init__(self, store, clock, nonces=None, limits=None):
        super().__init__()
        self.store = store
        self.clock = clock
        self.nonces = nonces if nonces is not None else NonceBook(clock)
        if limits is None:
            limits = (SourceLimiter(clock, POST_BURST, POST_RATE),
                      SourceLimiter(clock, NEW_KEY_BURST, NEW_KEY_RATE))
        self.posts, self.new_keys = limits

    def getChild(self, name, request):
        if name == b"":
            return self
        return EntryByKey(self.store, name)

    def render_POST(self, request):
        source = source_of(request)
        if not self.posts.allow(source):
            return _too_many(request)
        try:
            body = _read_body(request)
            if len(body) > MAX_ENTRY_BYTES:
                return _message(request, 413, f"entry too large (at most {MAX_ENTRY_BYTES} bytes)")
            entry = entry_from_json(body)
        except EntryError:
            return _message(request, 400, "error bad input")
        try:
            entry.validate(int(self.clock.seconds() * 1e9))
            entry.verify()
        except EntryError as e:
            code = 401 if str(e) == "invalid signature" else 422
            return _message(request, code, str(e))
        previous = self.store.get(entry.static)
        try:
            timeout = request.args.get(b"timeout") == [b"true"]
            if previous is None:
                if entry.sequence != 0:
                    return _message(request, 422, "entry validation error: new entry has non-zero sequence")
                if not self.new_keys.allow(source):
                    return _too_many(request)
                self.store.put(entry, timeout, source=source)
                return _message(request, 200, "wrote a new entry")
            previous.validate_iteration(entry)
            self.store.put(entry, timeout, source=source)
        except EntryError as e:
            code = 503 if str(e) == "discovery is full" else 422
            return _message(request, code, str(e))
        return _message(request, 200, "wrote new entry iteration")

    def render_GET(self, request):
        # /entry/ itself takes only POST and DELETE (the reference's router says 405).
        request.setHeader(b"Allow", b"POST, DELETE")
        return _message(request, 405, "method not allowed")

    render_HEAD = render_GET

    def render_DELETE(self, request):
        try:
            body = _read_body(request)
            entry = entry_from_json(body)
        except EntryError:
            return _message(request, 400, "error bad input")
        why = self._unproven(request, entry.static, body)
        if why is not None:
            return _message(request, 401, why)
        self.nonces.spend(entry.static)
        self.store.delete(entry.static)
        return _message(request, 200, "entry deleted")

    def _unproven(self, request, pk, body):
        """None when the request proves it is fresh and from pk's owner, else why not."""
        headers = request.requestHeaders
        public, nonce, sig = (headers.getRawHeaders(name, [None])[0]
                              for name in (b"SW-Public", b"SW-Nonce", b"SW-Sig"))
        if public is None or nonce is None or sig is None:
            return (f"unauthorized: a delete needs proof of the key (GET /security/nonces/{pk.hex()}, then "
                    "SW-Public, SW-Nonce and SW-Sig: the key's signature over the body and the nonce)")
        try:
            if PublicKey.from_hex(public.decode("ascii")) != pk:
                return "unauthorized: SW-Public is not the entry's key"
            expected = self.nonces.current(pk)
            if expected is None or nonce != str(expected).encode():
                return "unauthorized: SW-Nonce does not match (get a fresh one)"
            pk.verify(body + nonce, bytes.fromhex(sig.decode("ascii")))
        except (UnicodeDecodeError, ValueError, InvalidKey):
            return "unauthorized: SW-Sig does not verify"
        return None


def _too_many(request):
    request.setHeader(b"Retry-After", b"10")
    return _message(request, 429, "too many requests from this address; slow down")


class NonceResource(resource.Resource):
    """GET /security/nonces/{pk}: the nonce a delete of pk's entry must sign
    (the reference httpauth's NextNonceResponse shape)."""

    isLeaf = True

    def __init__(self, store, nonces):
        super().__init__()
        self.store, self.nonces = store, nonces

    def render_GET(self, request):
        if len(request.postpath) != 1:
            return _message(request, 404, "not found")
        try:
            pk = PublicKey.from_hex(request.postpath[0].decode("ascii", "replace"))
        except InvalidKey:
            return _message(request, 400, "error bad input")
        if self.store.get(pk) is None:  # nonces only for keys that have something to delete
            return _message(request, 404, "entry of public key is not found")
        return _reply(request, 200, {"edge": pk.hex(), "next_nonce": self.nonces.issue(pk)})


class EntryByKey(resource.Resource):
    isLeaf = True

    def __init__(self, store, name):
        super().__init__()
        self.store = store
        self.name = name

    def render_GET(self, request):
        try:
            pk = PublicKey.from_hex(self.name.decode("ascii", "replace"))
        except InvalidKey:
            return _message(request, 400, "error bad input")
        entry = self.store.get(pk)
        if entry is None:
            return _message(request, 404, "entry of public key is not found")
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json")
        return raw_json(entry)


class ListResource(resource.Resource):
    isLeaf = True

    def __init__(self, produce, raw=False):
        super().__init__()
        self.produce = produce
        self.raw = raw  # produce() returns the body bytes itself

    def render_GET(self, request):
        if self.raw:
            request.setResponseCode(200)
            request.setHeader(b"Content-Type", b"application/json")
            return self.produce()
        return _reply(request, 200, self.produce())


MAX_AVAILABLE = 512  # as the reference: at most this many, the emptiest first


def make_discovery_resource(clock, store=None, limits=None):
    """-> (root resource, store).  *limits*: (posts, new keys) SourceLimiters."""
    store = store if store is not None else EntryStore(clock)  # an empty store is falsy
    nonces = NonceBook(clock)
    root = resource.Resource()
    api = resource.Resource()
    root.putChild(b"dmsg-discovery", api)
    api.putChild(b"entry", EntryResource(store, clock, nonces, limits))
    security = resource.Resource()
    root.putChild(b"security", security)
    security.putChild(b"nonces", NonceResource(store, nonces))
    servers = lambda: [e for e in store.all() if e.server is not None]  # noqa: E731

    def available():
        free = sorted((e for e in servers() if e.server.available_sessions > 0),
                      key=lambda e: -e.server.available_sessions)
        return json_list(free[:MAX_AVAILABLE])

    api.putChild(b"available_servers", ListResource(available, raw=True))
    api.putChild(b"all_servers", ListResource(lambda: json_list(servers()), raw=True))
    api.putChild(b"entries", ListResource(
        lambda: [e.static.hex() for e in store.all() if e.client is not None]))
    root.putChild(b"health", ListResource(lambda: {"entries": len(store)}))
    return root, store


def make_discovery_site(reactor=None, clock=None):
    """The API as a hardened Site: body cap, head deadline, pending-connection cap."""
    from skypty.web.httpguard import GuardedSite

    if reactor is None:
        from twisted.internet import reactor
    root, store = make_discovery_resource(clock or reactor)
    site = GuardedSite(root, "discovery", reactor=reactor, max_body=MAX_BODY)
    site.store = store
    return site

"""The embedded dmsg discovery service (the reference's HTTP API, in memory).

Lifetimes follow the reference discovery: a client entry posted without
``?timeout=true`` never expires (current clients post only when their
sessions change); posted with it, it lasts 3 minutes after its last post;
a server entry lasts 2 minutes after its last post (servers post every
minute).  Posted entries are checked like the reference checks them
(signature over the current field list, version, server timestamps, a
growing sequence) and are served back exactly as posted: fields this code
does not know survive the round trip byte for byte.
"""

import heapq
import json

from twisted.logger import Logger
from twisted.web import resource

from skypty.dmsg.disc import EntryError, entry_from_json
from skypty.keys import InvalidKey, PublicKey

CLIENT_TIMEOUT_TTL = 180.0   # a client entry posted with ?timeout=true
SERVER_TTL = 120.0           # a server entry (2 x the servers' update interval)
ENTRY_TTL = CLIENT_TIMEOUT_TTL  # the old name
MAX_BODY = 64 * 1024
MAX_ENTRIES = 100_000


class EntryStore:
    """pk -> entry, each with its deadline (or none).  Expiry is lazy: a
    heap of deadlines is drained on each access, so a big store costs
    nothing per request beyond what actually expired."""

    def __init__(self, clock, max_entries=MAX_ENTRIES, client_timeout_ttl=CLIENT_TIMEOUT_TTL,
                 server_ttl=SERVER_TTL):
        self.clock = clock
        self.max_entries = max_entries
        self.client_timeout_ttl = client_timeout_ttl
        self.server_ttl = server_ttl
        self._entries = {}    # pk -> (entry, expires_at | None, serial)
        self._deadlines = []  # heap of (expires_at, serial, pk); superseded ones are skipped
        self._serial = 0

    def _current(self, item):
        expires, serial, pk = item
        held = self._entries.get(pk)
        return held is not None and held[2] == serial

    def _expire(self):
        now = self.clock.seconds()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)
            if self._current(item):
                del self._entries[item[2]]

    def lifetime(self, entry, timeout=False):
        """Seconds this entry lives after its post, or None for ever."""
        if entry.server is not None:
            return self.server_ttl
        return self.client_timeout_ttl if timeout else None

    def get(self, pk):
        self._expire()
        item = self._entries.get(pk)
        return item[0] if item else None

    def put(self, entry, timeout=False):
        self._expire()
        if entry.static not in self._entries and len(self._entries) >= self.max_entries:
            raise EntryError("discovery is full")
        ttl = self.lifetime(entry, timeout)
        expires = None if ttl is None else self.clock.seconds() + ttl
        self._serial += 1
        self._entries[entry.static] = (entry, expires, self._serial)
        if expires is not None:
            heapq.heappush(self._deadlines, (expires, self._serial, entry.static))
            if len(self._deadlines) > 2 * self.max_entries:  # re-posts leave superseded deadlines behind
                self._deadlines = [item for item in self._deadlines if self._current(item)]
                heapq.heapify(self._deadlines)

    def delete(self, pk):
        self._entries.pop(pk, None)

    def all(self):
        self._expire()
        return [item[0] for item in self._entries.values()]

    def __len__(self):
        self._expire()
        return len(self._entries)


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

    def __init__(self, store, clock):
        super().__init__()
        self.store = store
        self.clock = clock

    def getChild(self, name, request):
        if name == b"":
            return self
        return EntryByKey(self.store, name)

    def render_POST(self, request):
        try:
            entry = entry_from_json(_read_body(request))
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
                self.store.put(entry, timeout)
                return _message(request, 200, "wrote a new entry")
            previous.validate_iteration(entry)
            self.store.put(entry, timeout)
        except EntryError as e:
            return _message(request, 422, str(e))
        return _message(request, 200, "wrote new entry iteration")

    def render_GET(self, request):
        # /entry/ itself takes only POST and DELETE (the reference's router says 405).
        request.setHeader(b"Allow", b"POST, DELETE")
        return _message(request, 405, "method not allowed")

    render_HEAD = render_GET

    def render_DELETE(self, request):
        try:
            entry = entry_from_json(_read_body(request))
            entry.verify()
        except EntryError as e:
            code = 401 if str(e) == "invalid signature" else 400
            return _message(request, code, str(e) if code == 401 else "error bad input")
        self.store.delete(entry.static)
        return _message(request, 200, "entry deleted")


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


def make_discovery_resource(clock, store=None):
    store = store or EntryStore(clock)
    root = resource.Resource()
    api = resource.Resource()
    root.putChild(b"dmsg-discovery", api)
    api.putChild(b"entry", EntryResource(store, clock))
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

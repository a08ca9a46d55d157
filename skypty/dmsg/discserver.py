"""The embedded dmsg discovery service (the reference's HTTP API, in memory).

Entries expire 3 minutes after their last update; clients refresh each
minute.  Posted entries are checked like the reference checks them:
signature, version, server timestamps, and a growing sequence.
"""

import json

from twisted.logger import Logger
from twisted.web import resource, server

from skypty.dmsg.disc import EntryError, entry_from_json
from skypty.keys import InvalidKey, PublicKey

ENTRY_TTL = 180.0
MAX_BODY = 64 * 1024
MAX_ENTRIES = 100_000


class EntryStore:
    def __init__(self, clock, ttl=ENTRY_TTL):
        self.clock = clock
        self.ttl = ttl
        self._entries = {}  # pk -> (entry, stored_at)

    def _expire(self):
        now = self.clock.seconds()
        for pk in [pk for pk, (_, t) in self._entries.items() if now - t >= self.ttl]:
            del self._entries[pk]

    def get(self, pk):
        self._expire()
        item = self._entries.get(pk)
        return item[0] if item else None

    def put(self, entry):
        self._expire()
        if entry.static not in self._entries and len(self._entries) >= MAX_ENTRIES:
            raise EntryError("discovery is full")
        self._entries[entry.static] = (entry, self.clock.seconds())

    def delete(self, pk):
        self._entries.pop(pk, None)

    def all(self):
        self._expire()
        return [e for e, _ in self._entries.values()]


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
            if previous is None:
                if entry.sequence != 0:
                    return _message(request, 422, "entry validation error: new entry has non-zero sequence")
                self.store.put(entry)
                return _message(request, 200, "wrote a new entry")
            previous.validate_iteration(entry)
            self.store.put(entry)
        except EntryError as e:
            return _message(request, 422, str(e))
        return _message(request, 200, "wrote new entry iteration")

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
        return entry.to_json()


class ListResource(resource.Resource):
    isLeaf = True

    def __init__(self, produce):
        super().__init__()
        self.produce = produce

    def render_GET(self, request):
        return _reply(request, 200, self.produce())


def make_discovery_resource(clock, store=None):
    store = store or EntryStore(clock)
    root = resource.Resource()
    api = resource.Resource()
    root.putChild(b"dmsg-discovery", api)
    api.putChild(b"entry", EntryResource(store, clock))
    servers = lambda: [e for e in store.all() if e.server is not None]  # noqa: E731
    api.putChild(b"available_servers", ListResource(
        lambda: [e.to_object() for e in servers() if e.server.available_sessions > 0]))
    api.putChild(b"all_servers", ListResource(lambda: [e.to_object() for e in servers()]))
    api.putChild(b"entries", ListResource(lambda: [e.static.hex() for e in store.all()]))
    root.putChild(b"health", ListResource(lambda: {"entries": len(store.all())}))
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

"""dmsg discovery: signed entries, the HTTP client, and the entry keeper.

An entry is signed over its compact JSON exactly as the reference's
json-iterator (ConfigFastest) writes the current Go struct: struct field
order, no spaces, no HTML escaping, ``omitempty`` fields left out when
empty, nil client/server left out.  The field order of the current struct
(2026) is::

    version, sequence, timestamp, static, client, client_type, server,
    signature, protocol
    server: address, address_v6, address_udp, address_udp_v6, address_ws,
            address_wt, cert_hash_wt, cert_hash_wt_next, availableSessions,
            serverType, dht_bootstrap

With the newer fields empty this is byte for byte the 2023 form (the
vectors).  Fields this code does not know are kept (``extra``) but, as in
Go, are not part of what is signed.  The current discovery rewrites a
server entry's ``serverType`` after checking its signature, so fetched
*server* entries are never verified (the Noise XK handshake pins the server
key anyway); client entries are.
"""

import json
import re

import attr
from twisted.logger import Logger

from skypty.errors import ProtocolError, SkyptyError
from skypty.keys import InvalidKey, PublicKey

VERSION = "0.0.1"
MAX_ENTRY_JSON = 64 * 1024
MAX_RESPONSE = 4 * 1024 * 1024
MAX_STRING = 1024                   # any one string field
ENTRY_LIFETIME_NS = 60 * 10**9      # server entries older than this are refused
ALLOWED_AHEAD_NS = 5 * 10**9        # ... and so are entries from the future
MAX_INT64 = 2**63 - 1
MAX_UINT64 = 2**64 - 1

# Optional server strings between "address" and "availableSessions", in
# struct order: (JSON key, attribute).
SERVER_ADDRESSES = (
    ("address_v6", "address_v6"), ("address_udp", "address_udp"), ("address_udp_v6", "address_udp_v6"),
    ("address_ws", "address_ws"), ("address_wt", "address_wt"), ("cert_hash_wt", "cert_hash_wt"),
    ("cert_hash_wt_next", "cert_hash_wt_next"),
)
SERVER_KEYS = {"address", "availableSessions", "serverType", "dht_bootstrap"} | {k for k, _ in SERVER_ADDRESSES}
CLIENT_KEYS = {"delegated_servers"}
ENTRY_KEYS = {"version", "sequence", "timestamp", "static", "client", "client_type", "server", "signature",
              "protocol"}


class EntryError(ProtocolError):
    """An entry that is malformed, badly signed or refused by validation."""


class DiscoveryError(SkyptyError):
    """The discovery service failed or said no; *status* is the HTTP code."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class EntryNotFound(DiscoveryError):
    pass


def validation_error(cause):
    return EntryError(f"entry validation error: {cause}")


# -- json-iterator ConfigFastest, as far as entries need it ---------------------------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def go_string(text):
    """A JSON string as json-iterator writes it without HTML escaping:
    only quote, backslash and control characters are escaped (\\n \\r \\t by
    name, the rest as \\u00XX, lowercase); everything else is raw UTF-8."""
    def escape(m):
        ch = m.group()
        return _ESCAPES.get(ch) or "\\u00%02x" % ord(ch)

    return '"' + _NEEDS_ESCAPE.sub(escape, text) + '"'


def _go_text(value):
    # Go decodes a lone surrogate escape to U+FFFD; so do we, so that what we
    # sign and verify is what Go would.
    return _LONE_SURROGATE.sub("\ufffd", value)


def _extra_items(obj, known):
    """Unknown keys, kept in their order as (key, compact JSON) pairs."""
    return tuple((k, json.dumps(v, separators=(",", ":"), ensure_ascii=False))
                 for k, v in obj.items() if k not in known)


@attr.s(frozen=True, slots=True)
class ClientInfo:
    delegated_servers = attr.ib(factory=tuple, converter=tuple)
    # Go writes a nil slice as null and an empty one as []; which one was
    # signed matters.
    servers_null = attr.ib(type=bool, default=False)
    extra = attr.ib(factory=tuple, converter=tuple)

    def go_json(self):
        servers = ("null" if self.servers_null and not self.delegated_servers
                   else "[" + ",".join('"%s"' % k.hex() for k in self.delegated_servers) + "]")
        return '{"delegated_servers":' + servers + "}"


@attr.s(frozen=True, slots=True)
class ServerInfo:
    address = attr.ib(type=str)
    available_sessions = attr.ib(type=int, default=0)
    address_v6 = attr.ib(type=str, default="")
    address_udp = attr.ib(type=str, default="")
    address_udp_v6 = attr.ib(type=str, default="")
    address_ws = attr.ib(type=str, default="")
    address_wt = attr.ib(type=str, default="")
    cert_hash_wt = attr.ib(type=str, default="")
    cert_hash_wt_next = attr.ib(type=str, default="")
    server_type = attr.ib(type=str, default="")
    dht_bootstrap = attr.ib(type=bool, default=False)
    extra = attr.ib(factory=tuple, converter=tuple)

    def go_json(self):
        parts = ['"address":' + go_string(self.address)]
        for key, name in SERVER_ADDRESSES:
            value = getattr(self, name)
            if value:
                parts.append(f'"{key}":' + go_string(value))
        parts.append('"availableSessions":%d' % self.available_sessions)
        if self.server_type:
            parts.append('"serverType":' + go_string(self.server_type))
        if self.dht_bootstrap:
            parts.append('"dht_bootstrap":true')
        return "{" + ",".join(parts) + "}"


@attr.s(frozen=True, slots=True)
class Entry:
    static = attr.ib(type=PublicKey)
    sequence = attr.ib(type=int, default=0)
    timestamp = attr.ib(type=int, default=0)
    client = attr.ib(default=None)
    server = attr.ib(default=None)
    version = attr.ib(type=str, default=VERSION)
    signature = attr.ib(type=str, default="")
    client_type = attr.ib(type=str, default="")
    protocol = attr.ib(type=str, default="")
    extra = attr.ib(factory=tuple, converter=tuple)
    # The JSON this entry was read from (bytes), when it was read.
    raw = attr.ib(default=None, eq=False, repr=False)

    def canonical_json(self, include_signature=False):
        parts = ['"version":' + go_string(self.version), '"sequence":%d' % self.sequence,
                 '"timestamp":%d' % self.timestamp, '"static":"%s"' % self.static.hex()]
        if self.client is not None:
            parts.append('"client":' + self.client.go_json())
        if self.client_type:
            parts.append('"client_type":' + go_string(self.client_type))
        if self.server is not None:
            parts.append('"server":' + self.server.go_json())
        if include_signature and self.signature:
            parts.append('"signature":' + go_string(self.signature))
        if self.protocol:
            parts.append('"protocol":' + go_string(self.protocol))
        return ("{" + ",".join(parts) + "}").encode("utf-8")

    def to_json(self):
        """What the reference would POST for this entry (unknown fields dropped)."""
        return self.canonical_json(include_signature=True)

    def to_object(self):
        return json.loads(self.to_json())

    def signed(self, sk):
        unsigned = attr.evolve(self, signature="", raw=None)
        return attr.evolve(unsigned, signature=sk.sign(unsigned.canonical_json()).hex())

    def verify(self):
        if not self.signature:
            raise validation_error("entry has no signature")
        try:
            sig = bytes.fromhex(self.signature)
            self.static.verify(self.canonical_json(), sig)
        except (ValueError, InvalidKey):
            raise EntryError("invalid signature") from None

    @property
    def has_unknown_fields(self):
        return bool(self.extra or (self.client is not None and self.client.extra)
                    or (self.server is not None and self.server.extra))

    def validate(self, now_ns):
        """The reference's checks of a posted entry (signature separately)."""
        if not self.version:
            raise validation_error("entry has no version")
        if not self.signature:
            raise validation_error("entry has no signature")
        if self.static.is_null:
            raise validation_error("entry Keys is nil")
        if self.client is None and self.server is None:
            raise validation_error("entry has neither client or server field")
        if self.server is not None:
            if not self.server.address:
                raise validation_error("server address cannot be empty")
            # Client timestamps are not checked: current clients post only
            # when their sessions change, so theirs are old by design.
            if self.client is None and not (
                    now_ns - ENTRY_LIFETIME_NS <= self.timestamp <= now_ns + ALLOWED_AHEAD_NS):
                raise validation_error("advertised entry has outdated timestamp")

    def validate_iteration(self, nxt):
        if nxt.sequence <= self.sequence:
            raise validation_error("sequence field of new entry is not sequence of old entry + 1")
        if nxt.timestamp < self.timestamp:
            raise validation_error("advertised entry timestamp is not greater than previous")


def _want(obj, key, kind, default=None, required=False):
    if key not in obj or obj[key] is None:
        if required:
            raise EntryError(f"error bad input: missing {key}")
        return default
    value = obj[key]
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or not -MAX_INT64 - 1 <= value <= MAX_UINT64:
            raise EntryError(f"error bad input: {key} must be an integer")
    elif kind is bool:
        if not isinstance(value, bool):
            raise EntryError(f"error bad input: {key} must be true or false")
    elif not isinstance(value, kind):
        raise EntryError(f"error bad input: {key} has the wrong type")
    if kind is str:
        if len(value) > MAX_STRING:
            raise EntryError(f"error bad input: {key} too long")
        value = _go_text(value)
    return value


def _pk(text, key):
    if not isinstance(text, str):
        raise EntryError(f"error bad input: {key} must be a hex public key")
    try:
        return PublicKey.from_hex(text)
    except InvalidKey as e:
        raise EntryError(f"error bad input: {key}: {e}") from None


def _server_from_object(s):
    fields = {name: _want(s, key, str, default="") for key, name in SERVER_ADDRESSES}
    return ServerInfo(
        address=_want(s, "address", str, default=""),
        available_sessions=_want(s, "availableSessions", int, default=0),
        server_type=_want(s, "serverType", str, default=""),
        dht_bootstrap=_want(s, "dht_bootstrap", bool, default=False),
        extra=_extra_items(s, SERVER_KEYS), **fields)


def entry_from_object(obj, raw=None):
    if not isinstance(obj, dict):
        raise EntryError("error bad input: entry must be a JSON object")
    client = server = None
    c = _want(obj, "client", dict)
    if c is not None:
        servers = _want(c, "delegated_servers", list, default=None)
        if servers is not None and len(servers) > 64:
            raise EntryError("error bad input: too many delegated servers")
        client = ClientInfo(tuple(_pk(s, "delegated_servers") for s in servers or ()),
                            servers_null=servers is None, extra=_extra_items(c, CLIENT_KEYS))
    s = _want(obj, "server", dict)
    if s is not None:
        server = _server_from_object(s)
    sequence = _want(obj, "sequence", int, default=0)
    if sequence < 0:
        raise EntryError("error bad input: sequence must not be negative")
    timestamp = _want(obj, "timestamp", int, default=0)
    if timestamp > MAX_INT64:
        raise EntryError("error bad input: timestamp must be an integer")
    if server is not None and not -MAX_INT64 - 1 <= server.available_sessions <= MAX_INT64:
        raise EntryError("error bad input: availableSessions must be an integer")
    return Entry(
        static=_pk(_want(obj, "static", str, required=True), "static"),
        sequence=sequence,
        timestamp=timestamp,
        client=client, server=server,
        version=_want(obj, "version", str, default=""),
        signature=_want(obj, "signature", str, default=""),
        client_type=_want(obj, "client_type", str, default=""),
        protocol=_want(obj, "protocol", str, default=""),
        extra=_extra_items(obj, ENTRY_KEYS),
        raw=raw,
    )


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")  # NaN/Infinity: Python accepts them, Go does not


def parse_json(data):
    try:
        return json.loads(data, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise EntryError("error bad input: not JSON") from None


def entry_from_json(data):
    if len(data) > MAX_ENTRY_JSON:
        raise EntryError("error bad input: entry too large")
    data = bytes(data)
    return entry_from_object(parse_json(data), raw=data)


def client_entry(pk, sequence, timestamp, delegated_servers):
    # No "protocol" field: a current server gives smux only to a client whose
    # own entry says "smux", and skypty speaks yamux.
    return Entry(static=pk, sequence=sequence, timestamp=timestamp,
                 client=ClientInfo(tuple(delegated_servers)))


def server_entry(pk, sequence, timestamp, address, available_sessions):
    return Entry(static=pk, sequence=sequence, timestamp=timestamp,
                 server=ServerInfo(address, available_sessions))


# -- HTTP client ----------------------------------------------------------------

class DiscoveryClient:
    """The discovery HTTP API, with treq (injectable as *http* for tests)."""

    def __init__(self, base_url, reactor=None, http=None, timeout=10.0):
        if reactor is None:
            from twisted.internet import reactor
        self.base = base_url.rstrip("/") + "/dmsg-discovery"
        self.reactor = reactor
        self.timeout = timeout
        if http is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent, HTTPConnectionPool

            # No idle keep-alive connections: entries are posted once a minute.
            pool = HTTPConnectionPool(reactor, persistent=False)
            http = HTTPClient(Agent(reactor, pool=pool))
        self.http = http

    async def _request(self, method, path, body=None, headers=None, root=False):
        from twisted.internet import defer

        kwargs = {"timeout": self.timeout}
        if body is not None:
            kwargs["data"] = body
            kwargs["headers"] = {b"Content-Type": [b"application/json"]}
        if headers:
            kwargs.setdefault("headers", {}).update({k: [v] for k, v in headers.items()})
        url = (self.base[: -len("/dmsg-discovery")] if root else self.base) + path
        chunks, size = [], [0]

        def collect(data):
            size[0] += len(data)
            if size[0] > MAX_RESPONSE:  # aborts the connection: never buffer without bound
                raise DiscoveryError(f"discovery response larger than {MAX_RESPONSE} bytes")
            chunks.append(data)

        try:
            response = await getattr(self.http, method.lower())(url, **kwargs)
            import treq

            await treq.collect(response, collect)
        except DiscoveryError:
            raise
        except defer.CancelledError:
            raise DiscoveryError(f"discovery at {self.base} timed out") from None
        except Exception as e:  # connection refused, DNS, a collector error...
            if size[0] > MAX_RESPONSE:
                raise DiscoveryError("discovery response too large") from None
            raise DiscoveryError(f"discovery at {self.base} unreachable: {e}") from None
        content = b"".join(chunks)
        if response.code >= 300:
            message = content.decode("utf-8", "replace")
            try:
                message = json.loads(content)["message"]
            except (ValueError, KeyError, TypeError):
                pass
            cls = EntryNotFound if response.code == 404 else DiscoveryError
            raise cls(str(message), response.code)
        return content

    def _deferred(self, coro):
        from twisted.internet import defer

        return defer.ensureDeferred(coro)

    log = Logger()

    def get_entry(self, pk):
        """-> Deferred[Entry] for pk.  A client entry must verify; a server
        entry is taken as served (its serverType is rewritten by the
        current discovery, and the XK handshake pins the key anyway)."""
        async def run():
            content = await self._request("GET", "/entry/" + pk.hex())
            entry = entry_from_json(content)
            if entry.static != pk:
                raise DiscoveryError("discovery returned an entry for another key")
            if entry.server is None:
                try:
                    entry.verify()
                except EntryError:
                    if not entry.has_unknown_fields:
                        raise
                    # Signed over fields this code cannot serialise: the KK
                    # handshake still proves the peer's key, so use it.
                    self.log.debug("entry of {pk} has unknown fields; signature not checked", pk=pk.hex())
            return entry

        return self._deferred(run())

    def post_entry(self, entry):
        return self._deferred(self._request("POST", "/entry/", entry.to_json()))

    def delete_entry(self, entry, sk):
        """Delete *entry* (ours: *sk* is its key's).  A bare entry is no proof
        (it is public), so the request carries the reference httpauth's
        proof: a fresh nonce from the discovery, signed with the body."""
        async def run():
            pk = sk.public_key
            content = await self._request("GET", "/security/nonces/" + pk.hex(), root=True)
            try:
                nonce = parse_json(content)["next_nonce"]
                if isinstance(nonce, bool) or not isinstance(nonce, int) or not 0 <= nonce <= MAX_UINT64:
                    raise TypeError
            except (EntryError, KeyError, TypeError):
                raise DiscoveryError("discovery sent a bad nonce") from None
            body = entry.to_json()
            payload_nonce = str(nonce).encode()
            proof = {b"SW-Public": pk.hex().encode(), b"SW-Nonce": payload_nonce,
                     b"SW-Sig": sk.sign(body + payload_nonce).hex().encode()}
            return await self._request("DELETE", "/entry", body, headers=proof)

        return self._deferred(run())

    def _entries(self, path):
        async def run():
            content = await self._request("GET", path)
            try:
                items = parse_json(content)
            except EntryError:
                raise DiscoveryError("discovery sent a bad entry list") from None
            if not isinstance(items, list):
                raise DiscoveryError("discovery sent a bad entry list")
            entries = []
            for item in items:
                try:
                    raw = json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
                    entry = entry_from_object(item, raw=raw)
                except (EntryError, ValueError):
                    continue  # one malformed entry must not hide the good ones
                if entry.server is not None and entry.server.address:
                    entries.append(entry)  # never dropped for its signature (see the module doc)
            return entries

        return self._deferred(run())

    def available_servers(self):
        return self._entries("/available_servers")

    def all_servers(self):
        return self._entries("/all_servers")

    def entries(self):
        async def run():
            content = await self._request("GET", "/entries")
            try:
                items = parse_json(content)
            except EntryError:
                raise DiscoveryError("discovery sent a bad entry list") from None
            return [i for i in items if isinstance(i, str)] if isinstance(items, list) else []

        return self._deferred(run())


class EntryKeeper:
    """Keeps this node's entry in discovery: post, refresh every minute, and
    retry with exponential backoff (1 s .. 60 s) while discovery is down.

    *make_entry(sequence, timestamp_ns)* builds the unsigned entry.
    """

    log = Logger()
    REFRESH = 60.0
    MIN_BACKOFF = 1.0
    MAX_BACKOFF = 60.0

    def __init__(self, client, sk, make_entry, clock):
        self.client = client
        self.sk = sk
        self.make_entry = make_entry
        self.clock = clock
        self.sequence = None  # unknown until we read or post it
        self.last_posted = None
        self.backoff = self.MIN_BACKOFF
        self._call = None
        self._running = False
        self._busy = False
        self._inflight = None  # the post under way (cancelled by stop: nothing outlives the keeper)
        self.registered = False

    def start(self):
        self._running = True
        self._schedule(0)

    def stop(self):
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._inflight is not None:
            self._inflight.cancel()

    def update_now(self):
        """Something in the entry changed (e.g. the delegated servers)."""
        if self._running:
            self._schedule(0)

    def _schedule(self, delay):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self.clock.callLater(delay, self._tick)

    def _tick(self):
        if self._busy:
            return self._schedule(0.1)
        self._busy = True
        from twisted.internet import defer

        self._inflight = defer.ensureDeferred(self._post())
        self._inflight.addBoth(self._done)

    async def _post(self):
        if self.sequence is None:
            try:
                existing = await self.client.get_entry(self.sk.public_key)
                self.sequence = existing.sequence + 1
            except EntryNotFound:
                self.sequence = 0
        now_ns = int(self.clock.seconds() * 1e9)
        entry = self.make_entry(self.sequence, now_ns).signed(self.sk)
        await self.client.post_entry(entry)
        self.last_posted = entry
        self.sequence += 1

    def _done(self, result):
        self._busy = False
        self._inflight = None
        if not self._running:
            return
        if hasattr(result, "getErrorMessage"):
            err = result.value
            if isinstance(err, DiscoveryError) and err.status == 422:
                self.sequence = None  # somebody else moved our sequence on: read it again
            self.log.warn("discovery update failed ({err}); retrying in {delay:.0f}s",
                          err=result.getErrorMessage(), delay=self.backoff)
            self.registered = False
            self._schedule(self.backoff)
            self.backoff = min(self.backoff * 2, self.MAX_BACKOFF)
        else:
            if not self.registered:
                kind = "dmsg server" if getattr(self.last_posted, "server", None) else "client"
                self.log.info("registered in discovery as {pk} ({kind})", pk=self.sk.public_key.hex(), kind=kind)
            self.registered = True
            self.backoff = self.MIN_BACKOFF
            self._schedule(self.REFRESH)

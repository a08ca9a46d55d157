"""A hardened twisted.web Site for skypty's HTTP ports (web terminal, discovery).

What twisted.web leaves open, closed here:

* a deadline for each request's head and body (``HEAD_TIMEOUT``), counted
  from when the connection starts waiting for it (connection made, or the
  previous response done) and never reset by trickled bytes — twisted's idle
  timer restarts on every byte, so one byte a second held a connection forever;
* a cap on connections no request has yet vouched for: ``MAX_PENDING_PER_SOURCE``
  from one source (an IP address, an IPv6 /64, or a dmsg key), so that one
  peer holding connections open cannot lock everybody else out, and
  ``MAX_PENDING`` in all (file descriptors); over either, new connections
  are closed at once.  A connection frees its slot when
  it closes, when a gate admits it (:func:`authenticated`), or when a
  WebSocket takes it over (:func:`upgraded`);
* a body cap: an oversized Content-Length is answered 413 before any of the
  body is read, and a chunked body is cut off (413) as soon as it passes the
  cap.  Bodies stay in memory (they are small), never in temp files;
* an access log with no secrets: no query string (``?token=``), no Referer.
"""

from io import BytesIO

from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.iweb import IAccessLogFormatter
from zope.interface import provider

HEAD_TIMEOUT = 10.0  # like the Noise and dmsg handshakes
MAX_PENDING = 1024           # in all: bounds file descriptors
MAX_PENDING_PER_SOURCE = 32  # from one address (or /64, or dmsg key)
MAX_BODY = 64 * 1024
ABORT_GRACE = 2.0  # after the 408/413, for a peer that does not read it

log = Logger()


def peer_name(transport):
    """Who is at the other end, for logs: a dmsg stream's proven key, else host:port."""
    if transport is None:
        return "-"
    get_pk = getattr(transport, "getPeerPK", None)
    if get_pk is not None:
        pk = get_pk()
        if pk is not None:
            return pk.hex()
    peer = transport.getPeer()
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    if host is None:
        return str(peer)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def source_key(transport):
    """Whom a pending slot is charged to: a dmsg stream's proven key, else
    the peer's address (see :func:`address_key`)."""
    if transport is None:
        return "-"
    get_pk = getattr(transport, "getPeerPK", None)
    if get_pk is not None:
        pk = get_pk()
        if pk is not None:
            return "pk:" + pk.hex()
    return address_key(transport.getPeer())


def address_key(peer):
    """An IPv4 address, or an IPv6 /64 (one host usually holds a whole /64)."""
    host = getattr(peer, "host", None)
    if host is None:
        return str(peer)
    if ":" in host:
        import ipaddress

        try:
            return str(ipaddress.IPv6Network((host.split("%")[0], 64), strict=False))
        except ValueError:
            return host
    return host


def _quoted(value):
    """Bytes or text -> printable ASCII safe inside a double-quoted log field."""
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    return repr(value)[2:-1].replace('"', '\\"')


def without_query(uri):
    path, sep, _query = uri.partition(b"?")
    return path + (b"?..." if sep else b"")


@provider(IAccessLogFormatter)
def redacted_log_formatter(timestamp, request):
    """The combined log format, minus secrets: the query string (the web token
    arrives as ``?token=``) and the Referer (it repeats the page's URL) are
    never written.  Cookies never were."""
    channel = request.channel
    who = peer_name(channel.transport) if channel is not None else "-"
    return '"%s" - - %s "%s %s %s" %d %s "-" "%s"' % (
        _quoted(who), timestamp, _quoted(request.method), _quoted(without_query(request.uri)),
        _quoted(request.clientproto), request.code, request.sentLength or "-",
        _quoted(request.getHeader(b"user-agent") or b"-"))


class GuardedRequest(server.Request):
    """Keeps the body in memory and refuses it once it passes the site's cap."""

    def gotLength(self, length):
        # The channel already refused a declared length over the cap.
        self.content = BytesIO()

    def handleContentChunk(self, data):
        channel = self.channel
        if channel is None or channel.refusing:
            return
        if self.content.tell() + len(data) > channel.site.max_body:
            channel.refuse(413, b"Payload Too Large",
                           f"request body over {channel.site.max_body} bytes")
            return
        self.content.write(data)


class GuardedChannel(http.HTTPChannel):
    """HTTPChannel with a head deadline, a pending-connection slot and a body cap."""

    refusing = False
    _deadline = None
    _grace = None
    _waiting_quietly = True  # no byte of the awaited request has arrived yet

    def connectionMade(self):
        super().connectionMade()
        if not self.site.take_slot(self):
            self.refusing = True
            self.transport.abortConnection()
            return
        self._start_deadline()

    def dataReceived(self, data):
        if self.refusing:
            return  # after a refusal nothing more is parsed (or buffered)
        self._waiting_quietly = False
        super().dataReceived(data)

    def allHeadersReceived(self):
        if self.length is not None and self.length > self.site.max_body:
            self.refuse(413, b"Payload Too Large",
                        f"declared body of {self.length} bytes (cap {self.site.max_body})")
            return
        super().allHeadersReceived()

    def allContentReceived(self):
        if self.refusing:
            return  # a chunked body may end in the same read that passed the cap
        self._stop_deadline()
        super().allContentReceived()

    def requestDone(self, request):
        # Waiting for the next request starts now; pipelined bytes may finish it at once.
        self._start_deadline()
        super().requestDone(request)

    def connectionLost(self, reason):
        self._stop_deadline()
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self.site.free_slot(self)
        super().connectionLost(reason)

    def refuse(self, code, phrase, why):
        """Answer *code* without reading further, then close."""
        if self.refusing:
            return
        self.refusing = True
        self._stop_deadline()
        log.info("{site}: refused a request from {peer}: {why}", site=self.site.name,
                 peer=peer_name(self.transport), why=why)
        self.transport.write(b"HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                             % (code, phrase))
        self.loseConnection()
        self._grace = self.callLater(ABORT_GRACE, self.transport.abortConnection)

    def _start_deadline(self):
        self._stop_deadline()
        self._waiting_quietly = True
        self._deadline = self.callLater(self.site.head_timeout, self._deadline_passed)

    def _stop_deadline(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _deadline_passed(self):
        self._deadline = None
        if self._waiting_quietly:
            # An idle keep-alive (or silent) connection: just close it, the
            # way browsers expect, with no 408 they might misread and no log line.
            self.refusing = True
            self.loseConnection()
            self._grace = self.callLater(ABORT_GRACE, self.transport.abortConnection)
            return
        self.refuse(408, b"Request Timeout", f"no complete request within {self.site.head_timeout:g} s")


class GuardedSite(server.Site):
    """A Site whose connections are :class:`GuardedChannel` and whose access
    log is redacted.  *name* labels its log lines."""

    protocol = GuardedChannel
    requestFactory = GuardedRequest

    def __init__(self, resource, name, reactor=None, max_body=MAX_BODY, head_timeout=HEAD_TIMEOUT,
                 max_pending=MAX_PENDING, max_pending_per_source=MAX_PENDING_PER_SOURCE):
        super().__init__(resource, logFormatter=redacted_log_formatter, reactor=reactor)
        self.displayTracebacks = False
        self.name = name
        self.max_body = max_body
        self.head_timeout = head_timeout
        self.max_pending = max_pending
        self.max_pending_per_source = max_pending_per_source
        self.pending = set()
        self._by_source = {}  # source key -> its pending channels
        self._full_logged = False
        self._source_logged = set()  # sources already named in the log for this overload

    def take_slot(self, channel):
        source = source_key(channel.transport)
        mine = self._by_source.get(source)
        if mine is not None and len(mine) >= self.max_pending_per_source:
            if source not in self._source_logged and len(self._source_logged) < 64:
                self._source_logged.add(source)
                log.warn("{site}: {source} holds {n} connections that sent no request; closing its new ones",
                         site=self.name, source=source, n=len(mine))
            return False
        if len(self.pending) >= self.max_pending:
            if not self._full_logged:  # once per overload, not once per connection
                self._full_logged = True
                log.warn("{site}: {n} connections are waiting for a request; closing new ones",
                         site=self.name, n=len(self.pending))
            return False
        self.pending.add(channel)
        if mine is None:
            mine = self._by_source[source] = set()
        mine.add(channel)
        channel._pending_source = source
        return True

    def free_slot(self, channel):
        self.pending.discard(channel)
        source = getattr(channel, "_pending_source", None)
        mine = self._by_source.get(source)
        if mine is not None:
            mine.discard(channel)
            if not mine:
                del self._by_source[source]
                self._source_logged.discard(source)
        if len(self.pending) < self.max_pending:
            self._full_logged = False


def authenticated(request):
    """A gate admitted this request: its connection no longer counts as pending."""
    channel = request.channel
    site = getattr(channel, "site", None)
    if isinstance(site, GuardedSite):
        site.free_slot(channel)


def upgraded(request):
    """The connection is about to be taken over (WebSocket): HTTP's bookkeeping
    ends here, since the channel will never hear of it again (its connectionLost
    goes to the new protocol).  The head deadline is already off: the request
    was complete."""
    authenticated(request)

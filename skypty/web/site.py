"""The web terminal's HTTP side: /pty, /pty/<pk>, static assets, gating.

On the local TCP listener a per-host secret token is required, and WebSocket
handshakes must come from this same origin.  Over dmsg (HTTP on dmsg port 80)
the stream's proven PK is checked against the whitelist instead.

Where the token lives (#25.9).  It is given once, as ``?token=`` in the URL
``skypty-client url`` prints.  It used to be kept in a cookie, but browsers
do not scope cookies by port: every server on 127.0.0.1 (another user's on
another port included) received ``skypty_token=...`` and could replay it
with any Origin it liked.  A per-port cookie name would only rename what
leaks.  So the token is never put in a cookie: the page moves it from the
address bar into the tab's sessionStorage, which browsers do keep per
origin (scheme, host and port), drops it from the URL (history.replaceState),
and sends it only in its own WebSocket handshake, as the subprotocol
``skypty.token.<token>`` next to ``skypty`` (the one the host answers with).
The page itself holds no secret and is served without the token; a wrong
token is still refused.  A cookie an older host set is deleted on sight.
Since the tab keeps the token, any page it visits later could send it back
to /pty?commands=...: the page types ?commands= only from a URL that
carries the token too.
"""

import hmac
import os
import secrets
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger
from twisted.web import resource, static

from skypty.keys import InvalidKey, PublicKey
from skypty.web import httpguard
from skypty.web.terminal import TerminalFactory

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
OLD_COOKIE = "skypty_token"  # where older hosts kept the token: deleted, never read
TOKEN_PROTOCOL = "skypty.token."  # + the token: how the page presents it
FAVICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
           b'fill="#222"/><path d="M3 4l4 4-4 4M8 12h5" stroke="#6c6" stroke-width="2" fill="none"/></svg>')
# The page loads only its own scripts, so nothing else on it can read the
# token from sessionStorage; xterm.js adds <style> elements of its own.
CONTENT_SECURITY_POLICY = (b"default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                           b"img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; "
                           b"form-action 'none'; frame-ancestors 'none'")
MAX_BODY = 64 * 1024  # the web terminal takes no uploads

log = Logger()


def refused(entry_point, peer, why):
    """One log line per refusal: who (a dmsg peer's proven key, else host:port)
    and where.  Never the token: *why* is one of our fixed phrases."""
    log.warn("refused {peer} on {entry}: {why}", peer=peer, entry=entry_point, why=why)


def load_or_create_token(path):
    """The host's web token, kept in *path* (mode 0600), made on first use."""
    try:
        with open(path) as f:
            token = f.read().strip()
        if len(token) >= 32:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _same_origin(origin, host):
    if not origin or not host:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def token_from_protocols(protocols):
    """The token a page offered as a WebSocket subprotocol, or None."""
    for offered in protocols or ():
        if offered.startswith(TOKEN_PROTOCOL):
            return offered[len(TOKEN_PROTOCOL):]
    return None


class TokenGate:
    """Who may use the local web listener: holders of the host's token."""

    entry_point = "web"
    needs_token = True  # the page must find one (see the module's docstring)

    def __init__(self, token):
        self.token = token

    def token_ok(self, candidate):
        return bool(candidate) and hmac.compare_digest(candidate.encode(), self.token.encode())

    def websocket(self, request, transport=None):
        """Autobahn ConnectionRequest -> identity, or ConnectionDeny.  The token
        comes as a subprotocol (the page) or ?token= (scripts); never from a
        cookie, which any other port on this host would have received too."""
        headers = request.headers
        if not _same_origin(headers.get("origin", ""), headers.get("host", "")):
            refused(self.entry_point, httpguard.peer_name(transport), "cross-origin WebSocket")
            raise ConnectionDeny(403, "cross-origin WebSocket refused")
        token = token_from_protocols(request.protocols) or (request.params.get("token") or [None])[0]
        if not self.token_ok(token):
            refused(self.entry_point, httpguard.peer_name(transport), "WebSocket without a valid token")
            raise ConnectionDeny(403, "a valid token is required (see skypty-client url)")
        return "local"

    def page(self, request):
        """twisted.web request -> True (a valid ?token=), None (no token: the
        page, which holds no secret, finds it in the tab), False (a wrong one)."""
        if request.getCookie(OLD_COOKIE.encode()) is not None:
            # An older host's cookie goes to every port of this host: delete it.
            request.addCookie(OLD_COOKIE, "", path="/", max_age="0", expires="Thu, 01 Jan 1970 00:00:00 GMT",
                              httpOnly=True, sameSite="strict")
        given = request.args.get(b"token")
        if given is None:
            return None
        if self.token_ok(given[0].decode("ascii", "replace")):
            return True
        refused(self.entry_point, httpguard.peer_name(request.channel.transport), "page without a valid token")
        return False


class WhitelistGate:
    """Who may use the web terminal over dmsg (HTTP on dmsg port 80): the
    stream's proven public key must be whitelisted.  No token, no cookie."""

    entry_point = "web-dmsg"
    needs_token = False

    def __init__(self, whitelist):
        self.whitelist = whitelist

    def _pk(self, transport):
        get = getattr(transport, "getPeerPK", None)
        return get() if get else None

    def _admitted(self, transport, what):
        pk = self._pk(transport)
        if pk is not None and pk in self.whitelist:
            return pk
        refused(self.entry_point, httpguard.peer_name(transport), f"{what}: not whitelisted")
        return None

    def websocket(self, request, transport=None):
        pk = self._admitted(transport, "WebSocket")
        if pk is None:
            raise ConnectionDeny(403, "not authorized: this key is not on the host's whitelist")
        return pk

    def page(self, request):
        return self._admitted(request.channel.transport, "page") is not None


def _page(title, needs_token):
    with open(os.path.join(STATIC_DIR, "index.html"), encoding="utf-8") as f:
        html = f.read()
    return html.replace("$TITLE", title).replace("$NEEDS_TOKEN", "yes" if needs_token else "no").encode("utf-8")


class PtyPage(resource.Resource):
    """GET serves the page; a WebSocket upgrade on the same path opens the terminal."""

    isLeaf = True

    def __init__(self, gate, ws_resource, title):
        super().__init__()
        self.gate = gate
        self.ws_resource = ws_resource
        self.title = title

    def render_GET(self, request):
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if upgrade == b"websocket":
            # Autobahn takes the connection over and runs the gate on the handshake.
            httpguard.upgraded(request)
            return self.ws_resource.render(request)
        admitted = self.gate.page(request)
        if admitted is False:
            request.setResponseCode(403)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return (b"403 forbidden: open the URL printed by `skypty-client url` (it carries the token), "
                    b"or use a whitelisted key\n")
        if admitted:
            httpguard.authenticated(request)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        # The page's URL may carry ?token=: never send it on as a Referer.
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        request.setHeader(b"X-Frame-Options", b"DENY")
        request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return _page(self.title, self.gate.needs_token)


class PtyRoot(resource.Resource):
    def __init__(self, gate, ws_resource, own_pk):
        super().__init__()
        self.gate = gate
        self.ws_resource = ws_resource
        self.own_pk = own_pk

    def getChild(self, name, request):
        if name == b"":
            return PtyPage(self.gate, self.ws_resource, self.own_pk.hex()[:12] + "…")
        try:
            pk = PublicKey.from_hex(name.decode("ascii", "replace"))
        except InvalidKey:
            return resource.NoResource("not a public key")
        return PtyPage(self.gate, self.ws_resource, pk.hex()[:12] + "… (remote)")

    def render_GET(self, request):
        return PtyPage(self.gate, self.ws_resource, self.own_pk.hex()[:12] + "…").render_GET(request)


def target_of(path):
    """/pty -> None (this host); /pty/<pk> -> that PublicKey."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "pty":
        try:
            return PublicKey.from_hex(parts[1])
        except InvalidKey:
            raise ConnectionDeny(404, "not a public key") from None
    return None


def make_web_site(reactor, own_pk, gate, open_backend):
    factory = TerminalFactory(reactor, gate.websocket, open_backend, target_of, gate.entry_point)
    ws_resource = WebSocketResource(factory)
    root = resource.Resource()
    pty = PtyRoot(gate, ws_resource, own_pk)
    root.putChild(b"pty", pty)
    root.putChild(b"pty-static", static.File(STATIC_DIR))
    # Browsers ask for /favicon.ico whatever the page says: answer, not 404.
    root.putChild(b"favicon.ico", static.Data(FAVICON, "image/svg+xml"))
    root.putChild(b"", resource.ForbiddenResource("see /pty"))
    return httpguard.GuardedSite(root, gate.entry_point, reactor=reactor, max_body=MAX_BODY)

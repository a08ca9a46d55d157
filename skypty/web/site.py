"""The web terminal's HTTP side: /pty, /pty/<pk>, static assets, gating.

On the local TCP listener a per-host secret token is required (given once as
``?token=``, then kept in an HttpOnly SameSite cookie) and WebSocket
handshakes must come from this same origin.  Over dmsg (HTTP on dmsg port 80)
the stream's proven PK is checked against the whitelist instead.
"""

import hmac
import os
import secrets
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger
from twisted.web import resource, static

from skypty.keys import InvalidKey, PublicKey
from skypty.web import httpguard
from skypty.web.terminal import TerminalFactory

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
COOKIE = "skypty_token"
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


class TokenGate:
    """Who may use the local web listener: holders of the host's token."""

    entry_point = "web"

    def __init__(self, token):
        self.token = token

    def token_ok(self, candidate):
        return bool(candidate) and hmac.compare_digest(candidate.encode(), self.token.encode())

    def from_cookie_header(self, header):
        if not header:
            return None
        cookie = SimpleCookie()
        try:
            cookie.load(header)
        except Exception:
            return None
        morsel = cookie.get(COOKIE)
        return morsel.value if morsel else None

    def websocket(self, request, transport=None):
        """Autobahn ConnectionRequest -> identity, or ConnectionDeny."""
        headers = request.headers
        if not _same_origin(headers.get("origin", ""), headers.get("host", "")):
            refused(self.entry_point, httpguard.peer_name(transport), "cross-origin WebSocket")
            raise ConnectionDeny(403, "cross-origin WebSocket refused")
        token = (request.params.get("token") or [None])[0] or self.from_cookie_header(headers.get("cookie"))
        if not self.token_ok(token):
            refused(self.entry_point, httpguard.peer_name(transport), "WebSocket without a valid token")
            raise ConnectionDeny(403, "a valid token is required (see skypty-client url)")
        return "local"

    def page(self, request):
        """twisted.web request -> True if allowed (sets the cookie on a ?token= visit)."""
        query = request.args.get(b"token", [b""])[0].decode("ascii", "replace")
        if self.token_ok(query):
            request.addCookie(COOKIE, self.token, path="/", httpOnly=True, sameSite="strict")
            return True
        cookie = request.getCookie(COOKIE.encode())
        if self.token_ok(cookie.decode("ascii", "replace") if cookie else ""):
            return True
        refused(self.entry_point, httpguard.peer_name(request.channel.transport), "page without a valid token")
        return False


class WhitelistGate:
    """Who may use the web terminal over dmsg (HTTP on dmsg port 80): the
    stream's proven public key must be whitelisted.  No token, no cookie."""

    entry_point = "web-dmsg"

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


def _page(title):
    with open(os.path.join(STATIC_DIR, "index.html"), encoding="utf-8") as f:
        html = f.read()
    return html.replace("$TITLE", title).encode("utf-8")


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
        if not self.gate.page(request):
            request.setResponseCode(403)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return (b"403 forbidden: open the URL printed by `skypty-client url` (it carries the token), "
                    b"or use a whitelisted key\n")
        httpguard.authenticated(request)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        # The page's URL may carry ?token=: never send it on as a Referer.
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        request.setHeader(b"X-Frame-Options", b"DENY")
        return _page(self.title)


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
    root.putChild(b"", resource.ForbiddenResource("see /pty"))
    return httpguard.GuardedSite(root, gate.entry_point, reactor=reactor, max_body=MAX_BODY)

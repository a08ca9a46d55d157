"""The web terminal's WebSocket: browser <-> a pty on this host or a remote one.

Binary frames carry terminal bytes both ways.  Text frames carry JSON:
browser -> host ``{"type":"resize","cols":N,"rows":M}``; host -> browser
``{"type":"session","id":..., "offset":N}``, ``{"type":"error",...}`` and
``{"type":"exit"}``.  Output is batched (~16 ms) into few large frames.

Contact: the page sends ``{"type":"ping"}`` when it heard nothing for a
while and gets ``{"type":"pong"}``; a persistent session's page replaces a
silent socket and reattaches at its byte count (``?sid=&offset=``), told
``{"type":"lost","bytes":N}`` if the ring overflowed meanwhile.
"""

import json
import os

import txaio
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer

from skypty.wire.types import LOST_PREFIX
from skypty.web.httpguard import peer_name

BATCH_DELAY = 0.016
MAX_BATCH = 512 * 1024  # + one 64 KiB read stays under the 1 MiB message limit
READ_SIZE = 64 * 1024
DEFAULT_ROWS, DEFAULT_COLS = 30, 100
# The shell starts at the browser's size: the page puts it in the URL; for a
# client that only sends a resize message, wait this long for the first one.
FIRST_SIZE_WAIT = 0.5
SUBPROTOCOL = "skypty"  # the WebSocket subprotocol the host answers with (see skypty.web.site)
WEB_ENV = ["TERM=xterm-256color", "COLORTERM=truecolor"]
PAGE_SILENCE_LIMIT = 220  # seconds without a pong from the page before its socket (and plain shell) ends


def _shell_env():
    lang = os.environ.get("LANG") or "C.UTF-8"
    return WEB_ENV + [f"LANG={lang}"]


class AvatarTerminal:
    """A terminal backend on a PtyAvatar (this host's own avatar, or a proxy
    avatar that relays to a remote host); all calls may return Deferreds."""

    def __init__(self, avatar):
        self.avatar = avatar

    @defer.inlineCallbacks
    def open(self, rows, cols, sid=None, offset=None, commands=()):
        """-> (session id or None, offset the output continues from)."""
        a = self.avatar
        if sid and offset is None and hasattr(a, "attach_screen"):
            # a fresh page: the session's current screen, not its whole ring
            offset, _lost = yield defer.maybeDeferred(a.attach_screen, sid)
            yield defer.maybeDeferred(a.set_size, rows, cols)
            return sid, offset
        if sid:
            offset, _lost = yield defer.maybeDeferred(a.attach, sid, offset)
            yield defer.maybeDeferred(a.set_size, rows, cols)
            return sid, offset
        env = _shell_env()
        if getattr(a, "persistent", False):
            sid = yield defer.maybeDeferred(a.start_session, "", [], env, (rows, cols))
        else:
            yield defer.maybeDeferred(a.start, "", [], env, (rows, cols))
            sid = None
        for command in commands:
            yield defer.maybeDeferred(a.write, command.encode() + b"\n")
        return sid, 0

    def read(self, n):
        return defer.maybeDeferred(self.avatar.read, n)

    def write(self, data):
        return defer.maybeDeferred(self.avatar.write, data)

    def resize(self, rows, cols):
        return defer.maybeDeferred(self.avatar.set_size, rows, cols)

    def close(self):
        self.avatar.logout()


MAX_CONTROL_MESSAGE = 4096


def _dimension(value):
    """A terminal dimension from JSON or a query string: an int (not a bool,
    not a float such as 1e999) or a string of digits; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 5:
        value = int(value)
    return value if isinstance(value, int) and 0 < value < 1000 else None


def _size(rows, cols):
    """(rows, cols) if both are sane, else None."""
    rows, cols = _dimension(rows), _dimension(cols)
    return (rows, cols) if rows and cols else None


def parse_control(payload):
    """A browser's JSON text frame -> {"type": ..., ...}, or None if it is not
    one (too long, not JSON, nested past json's recursion limit, not an object)."""
    if len(payload) > MAX_CONTROL_MESSAGE:
        return None
    try:
        msg = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return msg if isinstance(msg, dict) else None


class TerminalProtocol(WebSocketServerProtocol):
    # Autobahn logs through self.log; a plain twisted Logger would let its debug
    # lines (the raw handshake, ?token= included) into the host log.  txaio's
    # logger honours the level set below.
    log = txaio.make_logger()

    def onConnect(self, request):
        self.backend = None
        self._batch, self._batch_size, self._flush_call = [], 0, None
        self._reading = False
        self._closed = False
        # The factory's gate raises ConnectionDeny for a stranger: nothing is spawned.
        self.identity = self.factory.gate(request, self.transport)
        self.target_pk = self.factory.target_of(request.path)
        params = request.params
        self.sid = (params.get("sid") or [""])[0] or None
        scheme = (params.get("scheme") or [""])[0]
        self.scheme = scheme if scheme.isalpha() and len(scheme) <= 16 else None  # skynet | dmsg
        offset = (params.get("offset") or [""])[0]
        self.offset = int(offset) if offset.isdigit() else None
        commands = (params.get("commands") or [""])[0]
        self.commands = [c for c in commands.split(",") if c.strip()][:32]
        self._size = _size((params.get("rows") or [""])[0], (params.get("cols") or [""])[0])
        self._size_known = defer.Deferred()
        self._started = False
        # The page offers "skypty" and "skypty.token.<token>": answer with the
        # former (a browser fails a handshake that names none), never the token.
        return SUBPROTOCOL if SUBPROTOCOL in request.protocols else None

    def onOpen(self):
        d = self.factory.open_backend(self.identity, self.target_pk, self.transport, scheme=self.scheme)
        d.addCallback(self._backend_ready)
        d.addErrback(self._failed)

    @defer.inlineCallbacks
    def _backend_ready(self, backend):
        self.backend = backend
        if self._closed:
            backend.close()
            return
        if self._size is None:
            timer = self.factory.reactor.callLater(FIRST_SIZE_WAIT, self._size_known.callback, None)
            yield self._size_known
            if timer.active():
                timer.cancel()
            if self._closed:
                backend.close()
                return
        rows, cols = asked = self._size or (DEFAULT_ROWS, DEFAULT_COLS)
        sid, offset = yield backend.open(rows, cols, self.sid, self.offset, self.commands)
        self._started = True
        if self._size and self._size != asked:  # resized while the shell was starting
            backend.resize(*self._size).addErrback(lambda f: None)
        if sid:
            self._send_json({"type": "session", "id": sid, "offset": offset})
        self._read_loop()

    def _failed(self, failure):
        message = failure.getErrorMessage()
        # A dmsg peer is named by its proven key; "local" (the token holder) by its address.
        who = (self.identity.hex() if hasattr(self.identity, "hex")
               else f"the token holder at {peer_name(self.transport)}")
        target = self.target_pk.hex() if self.target_pk is not None else "this host"
        verb = "refused" if failure.check(PermissionError, UnauthorizedLogin) else "failed for"
        self.log.warn("web terminal {verb} {who} on {entry} (to {target}): {err}", verb=verb, who=who,
                      entry=self.factory.entry_point, target=target, err=message)
        if not self._closed:
            self._send_json({"type": "error", "message": message})
            self.sendClose(code=1000)

    def _read_loop(self):
        if self._closed or self._reading:
            return
        if self._batch_size >= MAX_BATCH:
            return  # resumed by the next flush: the browser sets the pace
        self._reading = True
        d = self.backend.read(READ_SIZE)
        d.addCallbacks(self._got_output, self._output_ended)

    def _got_output(self, data):
        self._reading = False
        if self._closed:
            return
        self._batch.append(data)
        self._batch_size += len(data)
        if self._batch_size >= MAX_BATCH:
            if self._flush_call is not None:
                self._flush_call.cancel()
            self._flush()  # a full batch goes now; the loop continues from there
            return
        if self._flush_call is None:
            self._flush_call = self.factory.reactor.callLater(BATCH_DELAY, self._flush)
        self._read_loop()

    def _flush(self):
        self._flush_call = None
        if self._batch and not self._closed:
            self.sendMessage(b"".join(self._batch), isBinary=True)
        self._batch, self._batch_size = [], 0
        self._read_loop()

    def _output_ended(self, failure):
        self._reading = False
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush()
        if self._closed:
            return
        message = failure.getErrorMessage()
        if message.startswith(LOST_PREFIX):
            # the page fell more than the ring behind while away: say how much, go on
            lost = message[len(LOST_PREFIX):].split()[0]
            if lost.isdigit():
                self._send_json({"type": "lost", "bytes": int(lost)})
                self._read_loop()
                return
        if message == "EOF":
            self._send_json({"type": "exit"})
        else:
            self._send_json({"type": "error", "message": message})
        self.sendClose(code=1000)

    def _send_json(self, obj):
        self.sendMessage(json.dumps(obj).encode(), isBinary=False)

    def onMessage(self, payload, isBinary):
        if isBinary:
            if self.backend is not None:
                self.backend.write(payload).addErrback(lambda f: None)
            return
        msg = parse_control(payload)
        if msg is None:
            self.log.warn("bad control message from the browser")
            return
        if msg.get("type") == "ping":
            self._send_json({"type": "pong"})
            return
        if msg.get("type") == "resize":
            size = _size(msg.get("rows"), msg.get("cols"))
            if size is None:
                return
            if not self._started:  # the shell starts at this size
                self._size = size
                if not self._size_known.called:
                    self._size_known.callback(None)
            elif self.backend is not None:
                self.backend.resize(*size).addErrback(lambda f: None)

    def onClose(self, wasClean, code, reason):
        self._closed = True
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        if self.backend is not None:
            self.backend.close()


txaio.set_global_log_level("info")  # autobahn's debug lines would flood the host log


class TerminalFactory(WebSocketServerFactory):
    """*gate(request, transport) -> identity* raises ConnectionDeny; *open_backend(identity,
    target_pk, transport, scheme=None) -> Deferred[backend]*; *target_of(path) -> pk or None*;
    *entry_point* names this listener in log lines."""

    protocol = TerminalProtocol

    def __init__(self, reactor, gate, open_backend, target_of, entry_point="web"):
        super().__init__()
        self.reactor = reactor
        self.gate = gate
        self.open_backend = open_backend
        self.target_of = target_of
        self.entry_point = entry_point
        # Origin is checked by the gate (it knows the Host); pings keep proxies honest.
        # A page that stops answering keeps its shell for as long as a shell's
        # TCP connection would (netopts.SHELL_KEEPALIVE): a 3-minute outage is survivable.
        self.setProtocolOptions(autoPingInterval=10, autoPingTimeout=PAGE_SILENCE_LIMIT,
                                maxMessagePayloadSize=1024 * 1024, maxFramePayloadSize=1024 * 1024)


__all__ = ["AvatarTerminal", "ConnectionDeny", "TerminalFactory", "TerminalProtocol"]

"""The pty and whitelist services as net/rpc method tables, and the routes
(request-line URI -> service) each entry point offers.

    control socket: dmsgpty/pty, dmsgpty/whitelist, dmsgpty/proxy
    Noise TCP:      dmsgpty/pty, dmsgpty/sftp
    dmsg:           dmsgpty/pty, dmsgpty/sftp
"""

from twisted.internet import defer

from skypty.host.avatar import ERR_SESSIONS_OFF, RPCFault
from skypty.host.connection import BareClose
from skypty.wire import requestline
from skypty.wire import types as T
from skypty.wire.rpc import Method, RPCServerProtocol

EMPTY = T.EMPTY.cls()


def _size(req):
    s = req.size
    return (s.rows, s.cols) if s is not None and s.rows and s.cols else None


def _exec_result(r):
    return T.CommandExecResult.cls(
        stdout=r.stdout, stderr=r.stderr, stdout_truncated=r.stdout_truncated,
        stderr_truncated=r.stderr_truncated, exit_code=r.exit_code, timed_out=r.timed_out,
        duration_ms=r.duration_ms)


def pty_methods(avatar, sessions_visible):
    """net/rpc methods of the ``pty`` service for one connection's avatar."""

    def empty(fn):
        def handler(arg):
            result = fn(arg)
            if isinstance(result, defer.Deferred):
                return result.addCallback(lambda _: EMPTY)
            return EMPTY
        return handler

    def attach_at(req):
        offset, lost = avatar.attach(req.id, req.offset)
        return T.AttachResult.cls(offset=offset, lost=lost, end=avatar.output_end())

    def read_flagged(max_bytes):
        """pty.Read, the reply prefixed by one byte of the pty's modes
        (skypty.host.shell.TTY_*), taken when the output is handed over, so a
        client knows a prompt's echo is off before it shows the prompt."""
        def flagged(data):
            proc = getattr(avatar, "_proc", None)  # None: no shell (yet), or a remote host's
            mode = proc.tty_mode() if hasattr(proc, "tty_mode") else 0
            return bytes((mode,)) + data

        return defer.maybeDeferred(avatar.read, max_bytes).addCallback(flagged)

    def sessions(_):
        if avatar.context.sessions is None:
            raise RPCFault(ERR_SESSIONS_OFF)
        now = avatar.context.reactor.seconds()
        out = []
        for s in avatar.context.sessions.list():
            if sessions_visible or s["owner"] == avatar.public_key.hex():
                idle = 0 if s["idle_since"] is None else int(now - s["idle_since"])
                out.append(T.SessionInfo.cls(id=s["id"], owner=s["owner"], command=s["command"],
                                             attached=s["attached"], idle_seconds=idle))
        return out

    return {
        "pty.Start": Method(T.CommandReq, T.EMPTY, empty(
            lambda r: avatar.start(r.name, r.arg, r.env, _size(r)))),
        "pty.Read": Method(T.INT, T.BYTES, avatar.read),
        "pty.Write": Method(T.BYTES, T.INT, avatar.write),
        "pty.SetPtySize": Method(T.WinSize, T.EMPTY, empty(
            lambda ws: avatar.set_size(ws.rows, ws.cols, ws.x, ws.y))),
        "pty.Stop": Method(T.EMPTY, T.EMPTY, empty(lambda _: avatar.stop())),
        "pty.Ping": Method(T.EMPTY, T.EMPTY, empty(lambda _: avatar.ping())),
        "pty.Exec": Method(T.CommandExecReq, T.CommandExecResult, lambda r: avatar.exec_(
            r.name, r.arg, r.env, r.stdin, r.timeout_ms).addCallback(_exec_result)),
        "pty.StartSession": Method(T.CommandReq, T.STRING,
                                   lambda r: avatar.start_session(r.name, r.arg, r.env, _size(r))),
        "pty.Attach": Method(T.STRING, T.EMPTY, empty(lambda sid: avatar.attach(sid))),
        "pty.AttachAt": Method(T.AttachReq, T.AttachResult, attach_at),
        "pty.Sessions": Method(T.EMPTY, T.SessionList, sessions),
        # skypty extensions (a reference host answers "can't find method"):
        "pty.ExitStatus": Method(T.EMPTY, T.INT, lambda _: avatar.exit_status()),
        "pty.StartPiped": Method(T.CommandReq, T.EMPTY, empty(
            lambda r: avatar.start_piped(r.name, r.arg, r.env))),
        "pty.ReadFlagged": Method(T.INT, T.BYTES, read_flagged),
        "pty.ReadStderr": Method(T.INT, T.BYTES, lambda n: avatar.read_stderr(n)),
        "pty.CloseStdin": Method(T.EMPTY, T.EMPTY, empty(lambda _: avatar.close_stdin())),
    }


def whitelist_methods(host):
    from skypty.host.whitelist import WhitelistError

    def add(keys):
        host.whitelist.add(keys)
        return EMPTY

    def remove(keys):
        try:
            host.whitelist.remove(keys)
        except WhitelistError as e:
            raise RPCFault(str(e)) from None
        return EMPTY

    def sources(_):
        own, hypervisors = host.config.pk, set(host.config.hypervisors)
        from_config = set(host.config.pty.whitelist)

        def source(pk):
            if pk == own:
                return "own"
            if pk in hypervisors:
                return "hypervisor"
            return "config" if pk in from_config else "runtime"

        return [T.WhitelistEntry.cls(pk=pk, source=source(pk)) for pk in host.whitelist.keys()]

    def web_url(_):
        if not host.web_url:
            raise RPCFault("the web terminal is off on this host (set pty.web_listen)")
        return host.web_url

    return {
        "whitelist.Whitelist": Method(T.EMPTY, T.PubKeys, lambda _: host.whitelist.keys()),
        "whitelist.WhitelistAdd": Method(T.PubKeys, T.EMPTY, add),
        "whitelist.WhitelistRemove": Method(T.PubKeys, T.EMPTY, remove),
        "whitelist.Sources": Method(T.EMPTY, T.WhitelistEntries, sources),  # skypty extension
        "host.WebURL": Method(T.EMPTY, T.STRING, web_url),
        "host.Peers": Method(T.EMPTY, T.PubKeys, lambda _: host.visible_peers()),
    }


def routes_for(host, entry_point):
    def pty(avatar, query, conn):
        return RPCServerProtocol(pty_methods(avatar, sessions_visible=entry_point == "cli"), immediate=True)

    def whitelist(avatar, query, conn):
        return RPCServerProtocol(whitelist_methods(host))

    def proxy(avatar, query, conn):
        try:
            pk_hex, port, uri = requestline.parse_proxy_query(query)
        except requestline.RequestLineError:
            raise BareClose() from None
        from skypty.host.proxy import open_proxy

        # skypty's &scheme=skynet|dmsg pins a transport (reference hosts ignore it)
        return open_proxy(host, pk_hex, port, uri, scheme=query.get("scheme") or None)

    def sftp(avatar, query, conn):
        from skypty.host.sftp import make_sftp_protocol

        return make_sftp_protocol(avatar, host.config.pty.sftp)

    routes = {requestline.PTY: pty}
    if entry_point == "cli":
        routes[requestline.WHITELIST] = whitelist
        routes[requestline.PROXY] = proxy
    elif host.config.pty.sftp.enabled:
        routes[requestline.SFTP] = sftp
    return routes


def dial_remote_pty(host, pk, port, scheme=None):
    """A PtyAvatar-like object for a remote host's pty service (skynet, dmsg)."""
    from skypty.host.proxy import RemotePty

    return RemotePty.dial(host, pk, port, scheme)

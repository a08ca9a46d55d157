"""Reaching another host's pty service through this one (over dmsg).

``dmsgpty/proxy?pk=..&port=..`` on the control socket, and the web
terminal's ``/pty/<pk>``, dial the peer with this host's own key and relay
its pty service.  Without a dmsg overlay there is nothing to dial: the
request fails with a clear message: on the web, and on the control socket
(the reject byte and a reason, see HostConnection._service_failed).
"""

from twisted.internet import defer

from skypty.dmsg.errors import DialError


class RemoteUnavailable(DialError):
    reason = "no-overlay"


def _dmsg(host, pk_hex):
    if host.dmsg is None:
        raise RemoteUnavailable(f"cannot reach {pk_hex[:16]}…: this host has no dmsg overlay running")
    return host.dmsg


def open_proxy(host, pk_hex, port, uri):
    try:
        dmsg = _dmsg(host, pk_hex)
    except RemoteUnavailable as e:
        return defer.fail(e)
    return dmsg.proxy_service(pk_hex, port, uri)


class RemotePty:
    @staticmethod
    def dial(host, pk, port):
        try:
            dmsg = _dmsg(host, pk.hex())
        except RemoteUnavailable as e:
            return defer.fail(e)
        return dmsg.remote_pty(pk, port)


class RemotePtyAvatar:
    """A PtyAvatar-shaped view of a remote host's pty service (for the web's
    /pty/<pk>), over a stream that has already been accepted."""

    persistent = False

    def __init__(self, remote):
        from twisted.internet import protocol

        from skypty.wire.rpc import RPCClientProtocol

        self.remote = remote
        self.rpc = RPCClientProtocol()
        self.rpc.makeConnection(remote.transport)
        remote.attach(self.rpc.dataReceived, lambda: self.rpc.connectionLost(protocol.connectionDone))

    def start(self, name, args, env, size):
        from skypty.wire import types as T

        rows, cols = size or (30, 100)
        req = T.CommandReq.cls(name=name or "/bin/bash", arg=list(args), env=list(env),
                               size=T.WinSize.cls(rows=rows, cols=cols))
        return self.rpc.call("pty.Start", req, T.CommandReq, T.EMPTY)

    def read(self, n):
        from skypty.wire import types as T

        return self.rpc.call("pty.Read", n, T.INT, T.BYTES)

    def write(self, data):
        from skypty.wire import types as T

        return self.rpc.call("pty.Write", data, T.BYTES, T.INT)

    def set_size(self, rows, cols, xpixel=0, ypixel=0):
        from skypty.wire import types as T

        return self.rpc.call("pty.SetPtySize", T.WinSize.cls(rows=rows, cols=cols), T.WinSize, T.EMPTY)

    def logout(self):
        self.remote.transport.loseConnection()

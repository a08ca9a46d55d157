"""Reaching another host's pty service through this one.

``dmsgpty/proxy?pk=..&port=..`` on the control socket, and the web
terminal's ``/pty/<pk>``, dial the peer with this host's own key and relay
its pty service.  Dialling goes through the host's one seam, ``host.dialer``
(skypty.visor.dialer.MultiDialer): dmsg on a host of its own, skynet then
dmsg under a visor; ``&scheme=skynet|dmsg`` on the proxy URI pins one.
Without a way to dial there is nothing to reach: the request fails with a
clear message: on the web, and on the control socket (the reject byte and a
reason, see HostConnection._service_failed).
"""

from twisted.internet import defer

from skypty.dmsg.errors import DialError
from skypty.wire import requestline


class RemoteUnavailable(DialError):
    reason = "no-overlay"


def request_service(host, pk, port, uri=requestline.PTY, scheme=None):
    """Dial pk:port through ``host.dialer`` and ask for *uri*; -> Deferred[the
    answered RequestedService]."""
    from skypty.dmsg.client import RequestedService

    if getattr(host, "dialer", None) is None:
        return defer.fail(RemoteUnavailable(
            f"cannot reach {pk.hex()[:16]}…: this host has no dmsg overlay running"))
    return host.dialer.dial(pk, port, lambda: RequestedService(uri, own_pk=host.config.pk, peer_pk=pk),
                            scheme=scheme, ready=lambda remote: remote.accepted)


class NoSFTPService(DialError):
    reason = "no-sftp"


def open_proxy(host, pk_hex, port, uri, scheme=None):
    from skypty.dmsg.client import Relay
    from skypty.keys import PublicKey

    pk = PublicKey.from_hex(pk_hex)
    d = request_service(host, pk, port, uri, scheme)
    if uri == requestline.SFTP:
        d.addErrback(_why_no_sftp, host, pk, port, scheme)
    return d.addCallback(Relay)


def _why_no_sftp(failure, host, pk, port, scheme):
    """A host without an SFTP service (a Skywire reference host) refuses or
    closes the request just as it would a stranger: ask for its pty to tell
    the two apart, so the user is not told "not authorized" by a host that
    whitelists them."""
    from skypty.dmsg.errors import NoAnswer, NotWhitelisted

    if not failure.check(NoAnswer, NotWhitelisted):
        return failure

    def accepted(remote):
        remote.transport.loseConnection()
        raise NoSFTPService(f"host {pk.hex()} accepts this host's key but has no SFTP service")

    probe = request_service(host, pk, port, requestline.PTY, scheme)
    return probe.addCallbacks(accepted, lambda _: failure)


class RemotePty:
    @staticmethod
    def dial(host, pk, port, scheme=None):
        return request_service(host, pk, port, scheme=scheme).addCallback(RemotePtyAvatar)


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

"""Reaching another host's pty service through this one (over dmsg).

``dmsgpty/proxy?pk=..&port=..`` on the control socket, and the web
terminal's ``/pty/<pk>``, dial the peer with this host's own key and relay
its pty service.  Without a dmsg overlay there is nothing to dial: the
request fails with a clear message (the web) or a bare close (the proxy URI,
as the reference does).
"""

from twisted.internet import defer

from skypty.errors import SkyptyError
from skypty.host.connection import BareClose


class RemoteUnavailable(SkyptyError):
    pass


def _dmsg(host, pk_hex):
    if host.dmsg is None:
        raise RemoteUnavailable(f"cannot reach {pk_hex[:16]}…: this host has no dmsg overlay running")
    return host.dmsg


def open_proxy(host, pk_hex, port):
    try:
        dmsg = _dmsg(host, pk_hex)
    except RemoteUnavailable:
        raise BareClose() from None
    return dmsg.proxy_pty(pk_hex, port)


class RemotePty:
    @staticmethod
    def dial(host, pk, port):
        try:
            dmsg = _dmsg(host, pk.hex())
        except RemoteUnavailable as e:
            return defer.fail(e)
        return dmsg.remote_pty(pk, port)

"""Listeners of the host that need more than a plain endpoint service."""

import errno
import os
import socket
import stat

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from skypty.errors import SkyptyError


class ListenError(SkyptyError):
    pass


def clear_stale_unix_socket(path):
    """Remove *path* if it is a dead socket; refuse if a live host is behind it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            os.unlink(path)  # nobody listens: a leftover from a crashed host
            return
        raise ListenError(f"cannot check {path}: {e.strerror}") from None
    finally:
        probe.close()
    raise ListenError(f"another host is already listening on {path}")


class ControlSocketService(service.Service):
    """The local control socket: unix (mode 0600, stale file replaced) or tcp."""

    log = Logger()

    def __init__(self, reactor, network, address, factory):
        self.reactor = reactor
        self.network = network
        self.address = address
        self.factory = factory
        self.port = None

    def startService(self):
        super().startService()
        if self.network == "unix":
            clear_stale_unix_socket(self.address)
            parent = os.path.dirname(self.address) or "."
            os.makedirs(parent, exist_ok=True)
            self.port = self.reactor.listenUNIX(self.address, self.factory, mode=0o600)
            os.chmod(self.address, 0o600)
        else:
            from skypty.config import ListenAddress

            ep = endpoints.serverFromString(
                self.reactor, ListenAddress.parse(self.address, "cli_address").endpoint)
            # Whoever can connect acts as this host: keep a tcp control socket on loopback.
            d = ep.listen(self.factory)
            d.addCallback(lambda port: setattr(self, "port", port))
        self.log.info("control socket listening on {network}:{address}", network=self.network,
                      address=self.address)

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return defer.maybeDeferred(port.stopListening)

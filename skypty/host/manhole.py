"""A twisted.conch manhole for live debugging of a running host.

``twistd skypty --manhole unix:/run/skypty-manhole.sock`` (or the config's
``pty.manhole``).  A unix socket is created mode 0600, so only the host's
user (and root) can open it: ``socat - UNIX-CONNECT:/run/skypty-manhole.sock``
or ``telnet`` through it.  The namespace holds ``service``, ``config``,
``whitelist``, ``sessions`` and ``reactor``.
"""

import os

from twisted.application import internet
from twisted.conch import manhole, telnet
from twisted.conch.insults import insults
from twisted.internet import endpoints, protocol


def namespace_for(host):
    return {"service": host, "config": host.config, "whitelist": host.whitelist,
            "sessions": host.sessions, "reactor": host.reactor}


def make_manhole_factory(namespace):
    factory = protocol.ServerFactory()
    factory.protocol = lambda: telnet.TelnetTransport(
        telnet.TelnetBootstrapProtocol, insults.ServerProtocol, manhole.Manhole, namespace)
    return factory


class _PrivateUnixService(internet.StreamServerEndpointService):
    def __init__(self, endpoint, factory, path):
        super().__init__(endpoint, factory)
        self.path = path

    def privilegedStartService(self):
        if self.path and os.path.exists(self.path):
            from skypty.host.listeners import clear_stale_unix_socket

            clear_stale_unix_socket(self.path)
        return super().privilegedStartService()


def make_manhole_service(reactor, description, host):
    if description.startswith("unix:") and "mode=" not in description:
        description += ":mode=600"
    path = description[5:].split(":")[0] if description.startswith("unix:") else None
    endpoint = endpoints.serverFromString(reactor, description)
    svc = _PrivateUnixService(endpoint, make_manhole_factory(namespace_for(host)), path)
    svc._raiseSynchronously = True
    return svc

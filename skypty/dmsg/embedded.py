"""A self-contained dmsg network inside the host: discovery + a dmsg server.

With ``dmsg.embedded`` in the config a fresh host needs nothing else: it
runs its own discovery and dmsg server on loopback, and its dmsg client
registers there like any other.
"""

from twisted.application import internet, service
from twisted.internet import endpoints
from twisted.logger import Logger

from skypty.dmsg.discserver import make_discovery_site


class EmbeddedDmsgService(service.MultiService):
    log = Logger()

    def __init__(self, reactor, config):
        super().__init__()
        emb = config.dmsg.embedded
        self.discovery_site = make_discovery_site(reactor)
        ep = endpoints.serverFromString(reactor, emb.discovery_listen.endpoint)
        svc = internet.StreamServerEndpointService(ep, self.discovery_site)
        svc._raiseSynchronously = True
        svc.setServiceParent(self)
        from skypty.dmsg.server import DmsgServerService

        DmsgServerService(reactor, server_key(config.sk), emb.server_listen, emb.server_address,
                          config.dmsg.discovery).setServiceParent(self)


def server_key(host_sk):
    """The embedded server's own key, stable across restarts: discovery keeps
    one entry per key, so it must not be the host's (a client's) key."""
    import hashlib

    from skypty.keys import SecretKey

    return SecretKey(hashlib.sha256(b"skypty embedded dmsg server\0" + host_sk.raw).digest())

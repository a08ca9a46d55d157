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
        try:
            from skypty.dmsg.server import DmsgServerService
        except ImportError:
            return
        DmsgServerService(reactor, config.sk, emb.server_listen, emb.server_address,
                          config.dmsg.discovery).setServiceParent(self)

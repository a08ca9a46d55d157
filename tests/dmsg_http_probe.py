"""Fetch a path from a host's web terminal over dmsg (HTTP on dmsg port 80).

    python3 -m tests.dmsg_http_probe DISCOVERY_URL SK_HEX TARGET_PK PATH

Prints the HTTP status line.  Used by the tests as an independent dmsg peer.
"""

import sys

from twisted.internet import defer, protocol, reactor, task

from skypty.config import parse_config
from skypty.dmsg.client import DmsgClientEndpoint, DmsgClientService
from skypty.keys import PublicKey


class Fetch(protocol.Protocol):
    def __init__(self, path):
        self.path, self.data, self.done = path, b"", defer.Deferred()

    def connectionMade(self):
        self.transport.write(f"GET {self.path} HTTP/1.0\r\nHost: dmsg\r\n\r\n".encode())

    def dataReceived(self, data):
        self.data += data
        if b"\r\n" in self.data and not self.done.called:
            self.done.callback(self.data.split(b"\r\n", 1)[0].decode())


@defer.inlineCallbacks
def main(discovery, sk_hex, target, path):
    config = parse_config({"sk": sk_hex, "dmsg": {"discovery": discovery}})
    client = DmsgClientService(reactor, config)
    client.startService()
    for _ in range(300):
        if client.sessions:
            break
        yield task.deferLater(reactor, 0.05, lambda: None)
    fetch = Fetch(path)
    try:
        yield DmsgClientEndpoint(client, PublicKey.from_hex(target), 80).connect(
            protocol.Factory.forProtocol(lambda: fetch))
        print((yield fetch.done.addTimeout(10, reactor)))
    except Exception as e:
        print(f"error: {e}")
    client.stopService()


if __name__ == "__main__":
    task.react(lambda _r: main(*sys.argv[1:5]))

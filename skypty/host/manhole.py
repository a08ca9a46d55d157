"""A twisted.conch manhole for live debugging of a running host.

``twistd skypty --manhole unix:/run/skypty-manhole.sock`` (or the config's
``pty.manhole``).  A unix socket is created mode 0600, so only the host's
user (and root) can open it, with ``skypty-client manhole PATH`` (a line
editor in front of the socket's telnet).  The namespace holds ``service``,
``config``, ``whitelist``, ``sessions`` and ``reactor``.
"""

from twisted.application import internet
from twisted.conch import manhole, telnet
from twisted.conch.insults import insults
from twisted.internet import defer, endpoints, protocol


def namespace_for(host):
    return {"service": host, "config": host.config, "whitelist": host.whitelist,
            "sessions": host.sessions, "reactor": host.reactor}


class _Interpreter(manhole.ManholeInterpreter):
    def displayhook(self, obj):
        super().displayhook(obj)
        if obj is not None and not isinstance(obj, defer.Deferred):
            self.write("\n")  # each result on its own line (`for i in x: i` printed 01)


class _Manhole(manhole.Manhole):
    """conch's manhole without taking over the user's terminal: no full reset
    (ESC c) when it starts, no cleared screen when the window size arrives."""

    def connectionMade(self):
        super().connectionMade()
        self.interpreter = _Interpreter(self, self.namespace)

    def initializeScreen(self):
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()

    def terminalSize(self, width, height):
        self.width, self.height = width, height  # conch erases the display and redraws here


class _Terminal(insults.ServerProtocol):
    def loseConnection(self):
        # conch resets the whole terminal (ESC c) on the way out: undo only
        # what the line editor set (insert mode).
        self.resetModes([insults.modes.IRM])
        self.transport.loseConnection()


def make_manhole_factory(namespace):
    factory = protocol.ServerFactory()
    factory.noisy = False
    factory.protocol = lambda: telnet.TelnetTransport(
        telnet.TelnetBootstrapProtocol, _Terminal, _Manhole, namespace)
    return factory


def unix_path(description):
    """'unix:/run/x.sock:mode=600' -> '/run/x.sock'; None for other endpoints."""
    if not description.startswith("unix:"):
        return None
    path = []
    for part in description[5:].split(":"):
        if "=" in part and path:  # the options after the path
            break
        path.append(part)
    return ":".join(path).replace("\\", "")


class ManholeService(internet.StreamServerEndpointService):
    def __init__(self, endpoint, factory, path, setting):
        super().__init__(endpoint, factory)
        self.path = path
        self.setting = setting
        self._raiseSynchronously = True

    def check(self):
        """Clear what a killed host left behind; refuse a live one, in one line."""
        if self.path:
            from skypty.host.listeners import clear_stale_lock, clear_stale_unix_socket

            clear_stale_lock(self.path, self.setting)
            clear_stale_unix_socket(self.path, self.setting)

    def privilegedStartService(self):
        self.check()
        return super().privilegedStartService()


def make_manhole_service(reactor, description, host, setting="pty.manhole"):
    if description.startswith("unix:") and "mode=" not in description:
        description += ":mode=600"
    endpoint = endpoints.serverFromString(reactor, description)
    return ManholeService(endpoint, make_manhole_factory(namespace_for(host)), unix_path(description),
                          setting)

"""MultiDialer: reach a peer's service over the first transport that works.

The order is the reference's (pkg/pty dialer.go): skynet first (the visor's
routes), then dmsg.  Each attempt is bounded; when every attempt fails the
errors are joined, one per transport, so the user sees what was tried.  A
``scheme`` pins one transport.  A transport this host does not have (skynet
without a visor) is simply absent from the chain, and pinning it says why.

An attempt is the dial *and* the peer's answer (``ready``): a route that
opens and then closes unanswered falls through to the next transport, but a
peer that answers "not whitelisted" ends the chain, because the same host
would say the same over any transport.

Policy only: the dials themselves are callables, so this runs on a Clock.
"""

import attr
from twisted.internet import defer

from skypty.dmsg.errors import DialError, NotWhitelisted

SKYNET, DMSG = "skynet", "dmsg"
# Route finding and setup through the visor's router; short, so that dmsg
# still has time before a control-socket client gives up (10 s).
SKYNET_TIMEOUT = 5.0
DMSG_TIMEOUT = 30.0
# Errors after which no other transport is tried.
FINAL = (NotWhitelisted,)

NO_VISOR = ("this host is not running under a Skywire visor, and skynet routes are the visor's "
            "(run skypty as a visor app: skypty-visor-app)")


class SchemeUnavailable(DialError):
    reason = "scheme-unavailable"


class UnknownScheme(DialError):
    reason = "bad-scheme"


class AllTransportsFailed(DialError):
    reason = "unreachable"


class AttemptTimedOut(DialError):
    reason = "timeout"


@attr.s(frozen=True)
class Transport:
    name = attr.ib()
    dial = attr.ib()       # callable(pk, port, make_protocol) -> Deferred[protocol]
    timeout = attr.ib()    # seconds for the dial and the peer's answer together


class MultiDialer:
    def __init__(self, reactor, transports, unavailable=None):
        self.reactor = reactor
        self.transports = list(transports)
        self.unavailable = dict(unavailable or {})  # name -> why this host lacks it

    @property
    def names(self):
        return [t.name for t in self.transports]

    def plan(self, scheme=None):
        """The transports to try, in order, for *scheme* (None: all)."""
        if scheme is None or scheme == "":
            if not self.transports:
                raise SchemeUnavailable("this host has no transport to reach other hosts")
            return list(self.transports)
        for t in self.transports:
            if t.name == scheme:
                return [t]
        if scheme in self.unavailable:
            raise SchemeUnavailable(f"{scheme} is not available: {self.unavailable[scheme]}")
        known = sorted(set(self.names) | set(self.unavailable))
        raise UnknownScheme(f"unknown scheme {scheme[:20]!r} (known: {', '.join(known)})")

    @defer.inlineCallbacks
    def dial(self, pk, port, make_protocol, scheme=None, ready=None):
        """-> Deferred[protocol] connected to pk:port (and answered, if *ready*
        (protocol -> Deferred) is given)."""
        plan = self.plan(scheme)
        failures = []
        for transport in plan:
            try:
                proto = yield self._attempt(transport, pk, port, make_protocol, ready)
                return proto
            except FINAL:
                raise
            except Exception as e:
                failures.append((transport.name, e))
        if len(failures) == 1:
            raise failures[0][1]
        raise AllTransportsFailed(join_failures(failures, pk))

    def _attempt(self, transport, pk, port, make_protocol, ready):
        d = self._dial_and_answer(transport, pk, port, make_protocol, ready)
        d.addTimeout(transport.timeout, self.reactor,
                     onTimeoutCancel=lambda result, timeout: _timed_out(transport, timeout))
        return d

    @defer.inlineCallbacks
    def _dial_and_answer(self, transport, pk, port, make_protocol, ready):
        proto = yield transport.dial(pk, port, make_protocol)
        if ready is None:
            return proto
        try:
            answered = yield ready(proto)
        except BaseException:
            _abort(proto)
            raise
        if answered is None:  # an answer consumed elsewhere: treat as none
            _abort(proto)
            raise DialError(f"{transport.name}: no answer")
        return proto


def _timed_out(transport, timeout):
    raise AttemptTimedOut(f"no answer within {timeout:g}s")


def _abort(proto):
    transport = getattr(proto, "transport", None)
    if transport is not None:
        transport.abortConnection()


def join_failures(failures, pk=None):
    """[(transport, error)] -> "skynet: ...; dmsg: ..." (one line; the peer's
    66-hex key shortened, since the whole reason must fit in 255 bytes)."""
    parts = []
    for name, e in failures:
        text = " ".join((str(e) or type(e).__name__).split())
        if pk is not None:
            text = text.replace(pk.hex(), pk.hex()[:8] + "…")
        parts.append(text if text.startswith(name + ":") else f"{name}: {text}")
    return "; ".join(parts)


def standalone_dialer(reactor, dmsg_client):
    """The host on its own: dmsg only; skynet needs a visor."""
    from twisted.internet import protocol

    from skypty.dmsg.client import DmsgClientEndpoint

    def dial_dmsg(pk, port, make_protocol):
        return DmsgClientEndpoint(dmsg_client, pk, port).connect(protocol.Factory.forProtocol(make_protocol))

    return MultiDialer(reactor, [Transport(DMSG, dial_dmsg, DMSG_TIMEOUT)], unavailable={SKYNET: NO_VISOR})


def visor_dialer(reactor, app_client):
    """Under a visor: skynet (its router), then dmsg (its dmsg client)."""
    from twisted.internet import protocol

    from skypty.visor.appnet import AppNetClientEndpoint

    def through_visor(net):
        def dial(pk, port, make_protocol):
            return AppNetClientEndpoint(app_client, net, pk, port).connect(
                protocol.Factory.forProtocol(make_protocol))
        return dial

    return MultiDialer(reactor, [Transport(SKYNET, through_visor(SKYNET), SKYNET_TIMEOUT),
                                 Transport(DMSG, through_visor(DMSG), DMSG_TIMEOUT)])

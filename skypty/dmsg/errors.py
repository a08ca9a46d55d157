"""Why a dmsg dial failed, as types: the local host tells its client the
real reason (offline peer, no shared server, no answer, refused) instead of
one catch-all "not authorized"."""

from skypty.errors import SkyptyError


class DialError(SkyptyError):
    """A dial to pk:port failed; ``reason`` is a short machine-readable word."""

    reason = "failed"


class NotInDiscovery(DialError):
    reason = "not-in-discovery"


class DiscoveryUnavailable(DialError):
    reason = "discovery-unavailable"


class NoSharedServer(DialError):
    reason = "no-shared-server"


class NoAnswer(DialError):
    """The peer is registered but did not answer the stream request in time,
    or its server closed the stream (stopped peer)."""

    reason = "no-answer"


class StreamRefused(DialError):
    """The peer answered and refused the stream (nothing listens on the port)."""

    reason = "refused"


class NotWhitelisted(DialError):
    """The peer's pty service answered the request line with the reject byte."""

    reason = "not-whitelisted"

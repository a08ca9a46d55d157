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
    """The peer is registered, but every server we asked closed the request
    unanswered: none of them has a session to it (it stopped, or lost its
    dmsg session)."""

    reason = "no-answer"


class StreamRefused(DialError):
    """The peer answered and refused the stream (nothing listens on the port)."""

    reason = "refused"


class NotWhitelisted(DialError):
    """The peer's pty service answered the request line with the reject byte."""

    reason = "not-whitelisted"


class PeerRefused(DialError):
    """The peer answered and refused the stream for another reason than a
    free port (the reference's error code, in words)."""

    reason = "peer-error"


class DialTimeout(DialError):
    """A server took the request and nobody answered it in time (a slow or
    stuck path, not a host that is simply gone)."""

    reason = "timeout"


# The reference's stream error codes, in words (what a refusal's ErrCode means).
STREAM_ERRORS = {
    300: "the request's signature is invalid",
    301: "the request's timestamp is not newer than the last one",
    302: "the request's source key is not the session's (a server that does not relay)",
    303: "the request is for another key",
    304: "the request's source port is invalid",
    305: "the request's destination port is invalid",
    306: "nothing listens on that dmsg port",
    307: "the server has no session to the destination",
    352: "refused without a reason",
}


def stream_error(code):
    return STREAM_ERRORS.get(code, f"dmsg error {code}" if code else "refused without a reason")

"""Exception hierarchy shared by every layer.

Each wire codec raises a subclass of ProtocolError for anything a peer can
make it see; callers drop the connection on ProtocolError and carry on.
"""


class SkyptyError(Exception):
    """Base of every skypty error."""


class ProtocolError(SkyptyError):
    """A peer sent bytes that break the protocol (bad frame, bad length...)."""

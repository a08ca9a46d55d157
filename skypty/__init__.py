"""skypty: a Skywire-compatible remote shell host and client on Twisted."""

__version__ = "0.1.0"

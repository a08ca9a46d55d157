"""The pty request line: one length byte + URI; the host answers one byte.

``0x00`` accepts (the connection then carries net/rpc, or SFTP for
``dmsgpty/sftp``); anything else rejects.  The host trims one leading ``/``
and matches the path, query ignored.  No Twisted here.
"""

import re

from skypty.errors import ProtocolError

# urllib.parse and fnmatch are imported where used: the client only encodes
# request lines, and urllib.parse was ~2 ms of every one-shot exec.

ACCEPT = b"\x00"
REJECT = b"\x01"
MAX_URI = 255

PTY = "dmsgpty/pty"
WHITELIST = "dmsgpty/whitelist"
PROXY = "dmsgpty/proxy"
SFTP = "dmsgpty/sftp"


class RequestLineError(ProtocolError):
    pass


def encode_request(uri):
    try:
        raw = uri.encode("ascii")
    except UnicodeEncodeError:
        raise RequestLineError("request URI must be ASCII") from None
    if len(raw) > MAX_URI:
        raise RequestLineError(f"request URI longer than {MAX_URI} bytes")
    return bytes((len(raw),)) + raw


class RequestLineParser:
    """Feed bytes until the URI is complete; never buffers more than 256 bytes."""

    def __init__(self):
        self._buf = b""
        self.uri = None

    def feed(self, data):
        """-> (uri or None, leftover bytes after the request line)."""
        if self.uri is not None:
            return self.uri, data
        self._buf += data[:1 + MAX_URI]
        rest = data[1 + MAX_URI:]
        if not self._buf:
            return None, b""
        length = self._buf[0]
        if len(self._buf) < 1 + length:
            return None, b""
        raw = self._buf[1:1 + length]
        leftover = self._buf[1 + length:] + rest
        self._buf = b""
        try:
            uri = raw.decode("ascii")
        except UnicodeDecodeError:
            raise RequestLineError("request URI is not ASCII") from None
        parse_uri(uri)  # refuse it here, where callers handle RequestLineError, not at routing
        self.uri = uri
        return self.uri, leftover


def parse_uri(uri):
    """-> (path without one leading '/', {name: first value}), or RequestLineError."""
    from urllib.parse import parse_qs, urlsplit

    if uri.startswith("/"):
        uri = uri[1:]
    try:
        parts = urlsplit(uri)
    except ValueError as e:  # a bad bracketed host such as '//[' or '//[*:1]' (as Go's url.Parse refuses)
        raise RequestLineError(f"request URI does not parse: {e}") from None
    query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    return parts.path, query


def match(path, patterns):
    """The first of *patterns* (Go path.Match style, '*' not crossing '/') matching *path*."""
    import fnmatch

    for pattern in patterns:
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*")
        if re.fullmatch(regex, path):
            return pattern
    return None


# What a proxy may relay: the reference relays only the pty service; skypty
# adds ``&service=sftp`` (a reference host ignores it and relays a pty).
PROXY_SERVICES = {"pty": PTY, "sftp": SFTP}


def proxy_uri(pk_hex, port, service="pty"):
    uri = f"{PROXY}?pk={pk_hex}&port={int(port)}"
    return uri if service == "pty" else f"{uri}&service={service}"


def parse_proxy_query(query):
    """-> (pk hex, port, service URI), or RequestLineError."""
    pk, port = query.get("pk", ""), query.get("port", "")
    if not re.fullmatch(r"[0-9a-fA-F]{66}", pk):
        raise RequestLineError("proxy: pk must be 66 hex characters")
    # ASCII digits only: str.isdigit() also takes '²' (int() refuses it) and '١' (int() reads 1)
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise RequestLineError("proxy: port must be 1..65535")
    service = query.get("service", "pty")
    if service not in PROXY_SERVICES:
        raise RequestLineError(f"proxy: unknown service {service!r} (pty or sftp)")
    return pk.lower(), int(port), PROXY_SERVICES[service]


# -- a refusal's reason: the reject byte, one length byte, UTF-8 "reason-word: text" --

def encode_rejection(reason, text):
    """The reject byte and "reason-word: text" (at most 255 bytes of it);
    reference clients read the first byte and ignore the rest."""
    raw = f"{reason}: {text}".encode("utf-8")[:255]
    return REJECT + bytes((len(raw),)) + raw


def parse_rejection(data):
    """Bytes after the reject byte -> (reason word, text); ("", "") when the
    host said nothing more (a reference host, or an older skypty)."""
    if not data:
        return "", ""
    length = data[0]
    raw = data[1:1 + length].decode("utf-8", "replace")
    reason, _, text = raw.partition(": ")
    if not re.fullmatch(r"[a-z][a-z-]*", reason):
        return "", raw
    return reason, text

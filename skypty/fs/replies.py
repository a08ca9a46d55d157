"""The SFTP v3 replies a client parses, checked (sans-I/O).

conch's client reads these with ``getNS``, which never checks a length
against the data left, and ``nativeString``, which raises on a non-ASCII
error text or extension name: a short, lying or merely non-English reply
raised inside the protocol, the request it answered was never answered
(a hang until the deadline).  Here every length is checked and every
problem is one ``BadReply``; the link then fails that request and drops
the session.

A NAME reply carries at most ``MAX_NAMES`` entries: servers send about a
hundred (OpenSSH 100, conch 250, Go's pkg/sftp 128).  Its entries are
decoded lazily (``Names``): a directory walk holds one reply per level as
its bytes (at most the link's 1 MiB packet cap), not as Python objects.
"""

import struct

MAX_NAMES = 4096

ATTR_SIZE, ATTR_UIDGID, ATTR_PERMISSIONS, ATTR_ACMODTIME = 0x1, 0x2, 0x4, 0x8
ATTR_EXTENDED = 0x80000000

_U32 = struct.Struct("!L")
_U64 = struct.Struct("!Q")
_TWO_U32 = struct.Struct("!2L")


class BadReply(ValueError):
    """The bytes are not a well-formed reply of that type."""


def _u32(buf, pos, what):
    if len(buf) - pos < 4:
        raise BadReply(f"{what} cut short")
    return _U32.unpack_from(buf, pos)[0], pos + 4


def _string(buf, pos, what):
    n, pos = _u32(buf, pos, what)
    if n > len(buf) - pos:
        raise BadReply(f"{what} claims {n} bytes, {len(buf) - pos} left")
    return bytes(buf[pos:pos + n]), pos + n


def parse_attrs(buf, pos=0):
    """ATTRS at *pos* -> (dict with conch's keys, position after them)."""
    flags, pos = _u32(buf, pos, "attribute flags")
    attrs = {}
    if flags & ATTR_SIZE:
        if len(buf) - pos < 8:
            raise BadReply("size cut short")
        attrs["size"] = _U64.unpack_from(buf, pos)[0]
        pos += 8
    if flags & ATTR_UIDGID:
        if len(buf) - pos < 8:
            raise BadReply("uid/gid cut short")
        attrs["uid"], attrs["gid"] = _TWO_U32.unpack_from(buf, pos)
        pos += 8
    if flags & ATTR_PERMISSIONS:
        attrs["permissions"], pos = _u32(buf, pos, "permissions")
    if flags & ATTR_ACMODTIME:
        if len(buf) - pos < 8:
            raise BadReply("times cut short")
        attrs["atime"], attrs["mtime"] = _TWO_U32.unpack_from(buf, pos)
        pos += 8
    if flags & ATTR_EXTENDED:
        count, pos = _u32(buf, pos, "extended count")
        if count > (len(buf) - pos) // 8:  # each pair is at least two empty strings
            raise BadReply(f"{count} extended attributes cannot fit in the reply")
        for _ in range(count):
            kind, pos = _string(buf, pos, "extended type")
            data, pos = _string(buf, pos, "extended data")
            attrs["ext_" + kind.decode("utf-8", "backslashreplace")] = data
    return attrs, pos


def request_id(body):
    return _u32(body, 0, "request id")[0]


class Names:
    """A NAME reply's entries, checked whole, then decoded one at a time as
    they are iterated: what is held is the reply's bytes, not thousands of
    tuples and dicts (a directory walk holds one reply per level).  Reads
    like the list conch's client gives: iteration, len(), [i]."""

    __slots__ = ("_body", "_start", "_count")

    def __init__(self, body, start, count):
        self._body, self._start, self._count = body, start, count
        for _ in self:  # every length checked now: a bad reply fails its request, not a later walk
            pass

    def __len__(self):
        return self._count

    def __iter__(self):
        body, pos = self._body, self._start
        for _ in range(self._count):
            name, pos = _string(body, pos, "file name")
            longname, pos = _string(body, pos, "long name")
            attrs, pos = parse_attrs(body, pos)
            yield name, longname, attrs

    def __getitem__(self, index):
        return list(self)[index]

    def __eq__(self, other):
        return list(self) == list(other)

    def __repr__(self):
        return f"Names({list(self)!r})"


def parse_name(body):
    """A NAME reply's body (request id first) -> (request id, Names of (name, longname, attrs))."""
    rid, pos = _u32(body, 0, "request id")
    count, pos = _u32(body, pos, "name count")
    if count > MAX_NAMES:
        raise BadReply(f"{count} names in one reply (at most {MAX_NAMES})")
    if count > (len(body) - pos) // 12:  # name, long name, flags: 4 bytes each at least
        raise BadReply(f"{count} names cannot fit in the reply")
    return rid, Names(bytes(body), pos, count)


def parse_attrs_reply(body):
    rid, pos = _u32(body, 0, "request id")
    return rid, parse_attrs(body, pos)[0]


def parse_handle(body):
    """A HANDLE (or DATA) reply -> (request id, the string it carries)."""
    rid, pos = _u32(body, 0, "request id")
    return rid, _string(body, pos, "handle")[0]


def parse_status(body):
    """-> (request id, code, message bytes, language bytes); the two texts
    are optional (some v3 servers leave them out)."""
    rid, pos = _u32(body, 0, "request id")
    code, pos = _u32(body, pos, "status code")
    message = lang = b""
    if len(body) - pos >= 4:
        message, pos = _string(body, pos, "status message")
        if len(body) - pos >= 4:
            lang, pos = _string(body, pos, "language tag")
    return rid, code, message, lang

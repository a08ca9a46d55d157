"""Cutting an SFTP byte stream into packets, and corking what is sent (sans-I/O).

conch's protocol appends every delivery to a ``bytes`` buffer and slices
each packet off the front, copying the rest of the buffer every time; with
many pipelined requests (or 128 KiB data packets arriving in pieces) that is
most of the work.  ``PacketCutter`` keeps incomplete input until a packet is
whole, then hands out every complete packet as a view of one buffer that
is never changed afterwards: nothing is copied per packet, and a view may be
kept.

``Cork`` gathers the packets one batch of work produces (the replies to
every request that arrived in one read; a file's read-ahead requests) into
one write: one Noise pass and one ``send`` instead of one per packet.
"""

import struct

_HEADER = struct.Struct("!LB")  # length (of type + body), type
BIG = 16 * 1024  # a write this large is worth a send of its own


class PacketCutter:
    def __init__(self, limit):
        self.limit = limit  # the largest length field accepted
        self._held = bytearray()

    def feed(self, data):
        """-> (packets, refused): packets are (type, view of the body, request
        id included); *refused* is the length of an oversized packet (the
        stream is then unusable), else None."""
        if self._held:
            self._held += data
            if not self._ready(self._held):
                return [], None
            # The held buffer is handed out as it is (never changed again:
            # a new one takes its place), not copied once more.
            data, self._held = self._held, bytearray()
        elif not self._ready(data):
            self._held += data
            return [], None
        view = memoryview(data)
        packets, pos, end = [], 0, len(data)
        while end - pos >= 5:
            length, kind = _HEADER.unpack_from(data, pos)
            if length > self.limit or length < 1:
                self._held = bytearray()
                return packets, length
            if end - pos < 4 + length:
                break
            packets.append((kind, view[pos + 5:pos + 4 + length]))
            pos += 4 + length
        if pos < end:
            self._held += view[pos:]
        return packets, None

    @property
    def holding(self):
        """True while part of a packet has arrived and the rest has not."""
        return bool(self._held)

    def _ready(self, buf):
        """True once *buf* holds a whole packet (or one to refuse)."""
        if len(buf) < 5:
            return False
        length, _ = _HEADER.unpack_from(buf)
        return length > self.limit or length < 1 or len(buf) >= 4 + length


def pack(kind, body):
    return _HEADER.pack(len(body) + 1, kind) + body


class Cork:
    """Small writes to *write* held while corked (nestable), sent as one on
    the last uncork; uncorked, and big ones, go through at once (in order)."""

    def __init__(self, write):
        self._write = write
        self._depth = 0
        self._held = []

    def write(self, data):
        if self._depth and len(data) < BIG:
            self._held.append(data)
            return
        if self._held:  # a big one goes at once (joining it would only copy it), in order
            held, self._held = self._held, []
            self._write(b"".join(held))
        self._write(data)

    def discard(self):
        """The connection is gone: nothing held will be sent."""
        self._depth, self._held = 0, []

    def __enter__(self):
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if not self._depth and self._held:
            held, self._held = self._held, []
            self._write(held[0] if len(held) == 1 else b"".join(held))
        return False

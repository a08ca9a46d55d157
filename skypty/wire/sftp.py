"""Helpers around twisted.conch's SFTP protocol classes, for both ends
(the host's server and the FUSE client)."""

import struct

from twisted.logger import Logger


class QuietLogger(Logger):
    """conch's SFTP code logs every packet at info level ("dispatching:
    ..."): thousands of lines a second. Keep warnings and errors only."""

    def debug(self, *args, **kwargs):
        pass

    def info(self, *args, **kwargs):
        pass


class PacketGather:
    """Holds incoming bytes until a whole SFTP packet is there.

    conch appends every delivery to a bytes buffer, so a 128 KiB reply
    arriving in 4 KiB pieces would be copied over and over; this hands conch
    one piece per complete packet instead, and refuses oversized packets
    before buffering them.
    """

    TOO_BIG = object()

    def __init__(self, limit):
        self.limit = limit
        self._parts, self._size = [], 0

    def feed(self, buffered, data):
        """*buffered* is conch's leftover; -> bytes to pass on, None (wait),
        or TOO_BIG."""
        self._parts.append(data)
        self._size += len(data)
        head = buffered[:4]
        if len(head) < 4:
            for part in self._parts:
                head += part[:4 - len(head)]
                if len(head) == 4:
                    break
            else:
                return None
        need = 4 + struct.unpack("!L", head)[0]
        if need > self.limit + 4:
            return self.TOO_BIG
        if len(buffered) + self._size < need:
            return None
        whole = b"".join(self._parts)
        self._parts, self._size = [], 0
        return whole

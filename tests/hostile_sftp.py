"""A lying "local host" for skypty-client cp: a control socket that accepts
any request line, then answers SFTP v3 from a made-up tree chosen to hurt
the client (names that are paths, links to follow, an endless tree, a huge
directory, terminal escapes in names and error texts).

Run as a process of its own (its CPU and memory are not the client's):

    python3 tests/hostile_sftp.py SOCKET SCENARIO [OUTSIDE]

Blocking and sequential (the client's requests are answered in order, as a
real server does).  Only what cp asks for is implemented.
"""

import os
import socket
import struct
import sys

INIT, VERSION, OPEN, CLOSE, READ, LSTAT, OPENDIR, READDIR, STAT, READLINK = 1, 2, 3, 4, 5, 7, 11, 12, 17, 19
STATUS, HANDLE, DATA, NAME, ATTRS = 101, 102, 103, 104, 105
OK, EOF, NO_SUCH_FILE, FAILURE = 0, 1, 2, 4

DIR, FILE, LINK, SOCK, FIFO = 0o040755, 0o100644, 0o120777, 0o140644, 0o010644
CONTENT = b"the host wrote this\n"
PAGE = 100  # entries per NAME reply, as OpenSSH sends
PAGE_MAX = 4096  # the most the client takes in one (skypty.fs.replies.MAX_NAMES)


def ns(b):
    return struct.pack("!L", len(b)) + b


def attrs(mode, size=0):
    return struct.pack("!LQLLL", 0x1 | 0x4 | 0x8, size, mode, 1_600_000_000, 1_600_000_000)


class Tree:
    """kind(path) -> mode or None; entries(path) -> iterable of (name bytes, mode)."""

    def __init__(self, scenario, outside):
        self.scenario, self.outside = scenario, outside.encode()

    def kind(self, path):
        """Only sources the user names are stat'ed; entries carry their own attrs."""
        if path in (b"/", b"/t", b"/u", b"/e", b"/h", b"/s"):
            return DIR
        if self.scenario in ("endless", "wide") and path.startswith(b"/e/"):
            return DIR
        return None

    def entries(self, path):
        s = self.scenario
        if s == "traversal" and path == b"/t":
            yield b"../../x", FILE
            yield self.outside + b"/abs", FILE
            yield b"../../d", DIR
            yield b"lnk", LINK  # -> OUTSIDE
            yield b"lnk/through", FILE  # written through the link by a naive client
            yield b"ok", FILE
            yield None  # a new page: by then the link above exists
            yield b"lnk", DIR  # the same name again, now a directory to enter
        elif s == "traversal" and path == b"/u":
            yield b"lnk", LINK  # -> OUTSIDE, and nothing else to get in the way
            yield b"lnk/through", FILE
        elif s == "traversal" and path.endswith((b"/d", b"/lnk")):
            yield b"through", FILE
        elif s == "endless":
            yield b"d", DIR
        elif s == "wide":  # the worst case for the walk: a full page held at every level
            yield b"d", DIR
            for i in range(PAGE_MAX - 1):
                yield b"%0210d" % i, SOCK
        elif s == "huge" and path == b"/h":
            for i in range(1_000_000):
                yield b"%0210d" % i, SOCK
        elif s == "escapes" and path == b"/s":
            yield b"\x1b]0;pwned\x07\x1b[2J/x", FILE  # a path: refused, and its name printed
            yield b"bad", FILE  # opening it fails with an escape-laden error text
            yield b"utf", FILE  # ... with a non-ASCII one
            yield b"\x1b[32mgreen", FIFO  # skipped, its name printed

    def open_error(self, path):
        if path.endswith(b"/bad"):
            return b"\x1b[2J\x1b[31mfake error\x1b[0m"
        if path.endswith(b"/utf"):
            return "Zugriff verweigert \u2013 \u00fc".encode()
        return None


def serve(conn, tree):
    buf = b""

    def need(n):
        nonlocal buf
        while len(buf) < n:
            data = conn.recv(1 << 20)
            if not data:
                raise EOFError
            buf += data

    need(1)
    need(1 + buf[0])
    buf = buf[1 + buf[0]:]
    conn.sendall(b"\x00")  # accepted
    handles, files = {}, {}
    out = []

    def send(kind, body):
        out.append(struct.pack("!LB", len(body) + 1, kind) + body)

    def status(rid, code, msg=b""):
        send(STATUS, struct.pack("!LL", rid, code) + ns(msg) + ns(b""))

    while True:
        try:
            need(5)
        except EOFError:
            return
        length, kind = struct.unpack_from("!LB", buf)
        need(4 + length)
        body, buf = buf[5:4 + length], buf[4 + length:]
        if kind == INIT:
            send(VERSION, struct.pack("!L", 3))
        else:
            rid = struct.unpack_from("!L", body)[0]
            arg_len = struct.unpack_from("!L", body, 4)[0] if len(body) >= 8 else 0
            arg = body[8:8 + arg_len]
            if kind in (STAT, LSTAT):
                mode = tree.kind(arg)
                if mode is None:
                    status(rid, NO_SUCH_FILE, b"No such file")
                else:
                    send(ATTRS, struct.pack("!L", rid) + attrs(mode, len(CONTENT) if mode == FILE else 0))
            elif kind == OPENDIR:
                h = b"d%d" % len(handles)
                handles[h] = iter(tree.entries(arg))
                send(HANDLE, struct.pack("!L", rid) + ns(h))
            elif kind == READDIR:
                it = handles.get(arg)
                page = []
                for entry in it or ():
                    if entry is None:
                        break
                    page.append(entry)
                    if len(page) == (PAGE_MAX if tree.scenario == "wide" else PAGE):
                        break
                if not page:
                    status(rid, EOF)
                else:
                    send(NAME, struct.pack("!LL", rid, len(page)) + b"".join(
                        ns(name) + ns(b"" if tree.scenario == "wide" else name)  # wide: fit 1 MiB
                        + attrs(mode, len(CONTENT) if mode == FILE else 0)
                        for name, mode in page))
            elif kind == CLOSE:
                handles.pop(arg, None)
                files.pop(arg, None)
                status(rid, OK)
            elif kind == OPEN:
                why = tree.open_error(arg)
                if why is not None:
                    status(rid, FAILURE, why)
                else:
                    h = b"f%d" % len(files)
                    files[h] = CONTENT
                    send(HANDLE, struct.pack("!L", rid) + ns(h))
            elif kind == READ:
                offset, size = struct.unpack_from("!QL", body, 8 + arg_len)
                data = files.get(arg, b"")[offset:offset + size]
                if data:
                    send(DATA, struct.pack("!L", rid) + ns(data))
                else:
                    status(rid, EOF)
            elif kind == READLINK:
                send(NAME, struct.pack("!LL", rid, 1) + ns(tree.outside) + ns(b"") + struct.pack("!L", 0))
            else:
                status(rid, FAILURE, b"not in this fake")
        if len(buf) < 5 or len(buf) < 4 + struct.unpack_from("!L", buf)[0]:
            conn.sendall(b"".join(out))  # answer what arrived together in one write
            out.clear()


def main():
    path, scenario = sys.argv[1], sys.argv[2]
    outside = sys.argv[3] if len(sys.argv) > 3 else "/nonexistent"
    tree = Tree(scenario, outside)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path + ".tmp")
    listener.listen(4)
    os.rename(path + ".tmp", path)  # appears only once it listens
    while True:
        conn, _ = listener.accept()
        try:
            serve(conn, tree)
        except (EOFError, OSError):
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    main()

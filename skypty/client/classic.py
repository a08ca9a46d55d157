"""``exec`` against a host without ``pty.Exec`` (a reference host from before
2026, or anything behind a reference host's proxy): run the command on a
pty with ``pty.Start`` and recover what exec promises as far as it can.

* The command runs under ``sh -c`` with the pty in raw mode (no echo, no
  ``\\n`` -> ``\\r\\n``), its stdin from /dev/null (or exactly the ``--stdin``
  bytes, read by ``head -c``), so its output arrives byte for byte; stderr
  is merged into stdout (a pty has one output).
* The exit status comes back as a trailer: a random marker that cannot occur
  in the output by accident, then ``$?``.  The client strips it.
* Timeout (124) and the 16 MiB cap are enforced here, on the client.
"""

import os
import re
import shlex
import time

from skypty.client.transport import wait_for_fd
from skypty.wire import types as T
from skypty.wire.rpc import RPCError

READ_SIZE = 64 * 1024
CAPTURE_LIMIT = 16 * 1024 * 1024
MAX_TIMEOUT_MS = 5 * 60_000


def new_marker():
    return f"<skypty-exit-{os.urandom(16).hex()}>".encode()


def wrapper_script(marker, ready_marker=None, stdin_size=0):
    """The ``sh -c`` script; the command itself is "$@"."""
    feed = f"head -c {int(stdin_size)} | " if ready_marker else ""
    source = "" if ready_marker else " </dev/null"
    ready = f"printf '%s\\n' {shlex.quote(ready_marker.decode())}; " if ready_marker else ""
    return (f"stty raw -echo 2>/dev/null; {ready}{feed}\"$@\"{source}; "
            f"printf '%s%d\\n' {shlex.quote(marker.decode())} \"$?\"")


class TrailerParser:
    """Pass output through until ``marker + digits + newline``; then stop.

    Holds back only a tail that could still be the start of the marker, so
    output flows while the command runs."""

    def __init__(self, marker):
        self.marker = marker
        self.status = None
        self._held = b""

    @property
    def done(self):
        return self.status is not None

    def feed(self, data):
        if self.done:
            return b""
        buf = self._held + data
        i = buf.find(self.marker)
        if i >= 0:
            rest = buf[i + len(self.marker):]
            m = re.match(rb"(\d{1,3})\r?\n", rest)
            if m:
                self.status, self._held = int(m.group(1)), b""
                return buf[:i]
            if re.fullmatch(rb"\d{0,3}\r?", rest):
                self._held = buf[i:]  # the trailer is still arriving
                return buf[:i]
        keep = self._prefix_overlap(buf)
        self._held = buf[len(buf) - keep:]
        return buf[:len(buf) - keep]

    def _prefix_overlap(self, buf):
        for n in range(min(len(buf), len(self.marker) - 1), 0, -1):
            if self.marker.startswith(buf[-n:]):
                return n
        return 0

    def finish(self):
        held, self._held = self._held, b""
        return held


class Ready:
    """Waits for the ready line before stdin may be sent (pure)."""

    def __init__(self, marker):
        self.line = marker + b"\n"
        self.seen = False
        self._buf = b""

    def feed(self, data):
        """-> output after the ready line (b'' until then)."""
        if self.seen:
            return data
        self._buf += data
        i = self._buf.find(self.line)
        if i < 0:
            self._buf = self._buf[-len(self.line):]
            return b""
        self.seen = True
        rest, self._buf = self._buf[i + len(self.line):], b""
        return rest


def run_exec_on_pty(rpc, channel, argv, timeout_ms, stdin, out, err, env):
    """pty.Start with the wrapper; -> exit code (124 on timeout)."""
    timeout_ms = min(timeout_ms or 30_000, MAX_TIMEOUT_MS)
    marker = new_marker()
    ready_marker = new_marker() if stdin else None
    script = wrapper_script(marker, ready_marker, len(stdin))
    req = T.CommandReq.cls(name="sh", arg=["-c", script, "sh", *argv],
                           size=T.WinSize.cls(rows=24, cols=80), env=env)
    rpc.call("pty.Start", req, T.CommandReq, T.EMPTY)
    parser, ready = TrailerParser(marker), (Ready(ready_marker) if stdin else None)
    deadline = time.monotonic() + timeout_ms / 1000.0
    written, truncated = 0, False
    read_seq = rpc.start("pty.Read", READ_SIZE, T.INT, T.BYTES)
    channel.settimeout(None)
    while True:
        while rpc._early or getattr(channel, "pending", lambda: False)():
            rpc.pump()
        if read_seq in rpc.results:
            value = rpc.results.pop(read_seq)
            if isinstance(value, RPCError):
                break  # EOF: the wrapper has exited
            if ready is not None and not ready.seen:
                value = ready.feed(value)
                if ready.seen:
                    rpc.start("pty.Write", stdin, T.BYTES, T.INT)
            data = parser.feed(value)
            room = CAPTURE_LIMIT - written
            if len(data) > room:
                data, truncated = data[:room], True
            if data:
                out.write(data)
                written += len(data)
            if parser.done:
                break
            read_seq = rpc.start("pty.Read", READ_SIZE, T.INT, T.BYTES)
        for seq in [s for s in rpc.results if s != read_seq]:
            value = rpc.results.pop(seq)  # writes: only a failure matters
            if isinstance(value, RPCError):
                raise value
        left = deadline - time.monotonic()
        if left <= 0:
            rpc.start("pty.Stop", T.EMPTY.cls(), T.EMPTY, T.EMPTY)
            out.flush()
            err.write(f"[timed out after {timeout_ms}ms]\n".encode())
            err.flush()
            return 124
        if wait_for_fd(channel, left) and not rpc.pump():
            break
    if not parser.done:
        tail = parser.finish()[:max(0, CAPTURE_LIMIT - written)]
        out.write(tail)
    out.flush()
    if truncated:
        err.write(b"[skypty: output truncated at 16 MiB]\n")
    err.flush()
    if parser.status is None:
        from skypty.client.errors import ClientError

        raise ClientError("the command's exit status was lost (the host ended the session "
                          "before reporting it)")
    return parser.status

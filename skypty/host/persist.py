"""Persistent sessions: shells that outlive the stream that started them.

Output goes into a 256 KiB ring with absolute byte offsets.  Each attached
follower reads from its own offset.  While a follower is attached the shell
waits for the most advanced one (its pty is not read past half a ring
ahead), as over ssh; detached, it runs on, and a follower that comes back
too late skips what was overwritten and is *told* how much it lost.  A detached session is reaped
after ``ttl`` seconds without a follower (swept every ``sweep_interval``),
on pty.Stop, and at once when its shell has exited and every byte of its
output has been read (output nobody has read yet waits for a reattach, up to
the TTL: a dropped link must not lose the end of a command's output).

Reference clients attach by id and get the whole ring replayed; skypty's own
client also says how many bytes it already has (``attach(..., offset=N)``), so
a reconnect continues exactly where the old link stopped.
"""

import collections
import os

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from skypty.host.shell import MAX_READ, IOutputSink, PtyProcess, ShellEnded
from skypty.wire.types import LOST_PREFIX, SKIP_PREFIX

RING_CAPACITY = 256 * 1024
ERR_NOT_FOUND = "dmsgpty: session not found"
ERR_OTHER_OWNER = "dmsgpty: session owned by a different public key"
# An attached session's shell is paused when its most advanced follower is
# this far behind (well inside the ring, with room for one 64 KiB delivery
# more), and resumed when it is back within RESUME_LAG.
PAUSE_LAG = RING_CAPACITY // 2
RESUME_LAG = RING_CAPACITY // 8


class SessionNotFound(LookupError):
    def __init__(self):
        super().__init__(ERR_NOT_FOUND)


class SessionOwnedByOther(LookupError):
    def __init__(self):
        super().__init__(ERR_OTHER_OWNER)


class OutputLost(Exception):
    """A follower fell more than the ring behind; *count* bytes are gone."""

    def __init__(self, count):
        super().__init__(f"{LOST_PREFIX}{count} bytes")
        self.count = count


# Where a terminal's picture starts over: clear screen, clear scrollback, full
# reset, and entering the alternate screen (a full-screen program).
SCREEN_MARKS = (b"\x1b[2J", b"\x1b[3J", b"\x1bc", b"\x1b[?1049h", b"\x1b[?1047h", b"\x1b[?47h")
ALT_SCREEN_ENTER = SCREEN_MARKS[3:]
ALT_SCREEN_LEAVE = (b"\x1b[?1049l", b"\x1b[?1047l", b"\x1b[?47l")
SCREEN_TAIL = 16 * 1024  # a few screenfuls: enough to draw what a plain shell shows


class OutputRing:
    """The latest *capacity* bytes of a stream, addressed by absolute offset."""

    def screen_start(self, tail=SCREEN_TAIL):
        """The offset a new viewer should replay from to see the screen as it
        stands, not the whole ring: inside a full-screen program, from where
        it entered the alternate screen; else from the last screen clear, but
        no more than *tail* bytes (from a line start) back."""
        buf = self._buf

        def last(marks):
            return max(buf.rfind(m) for m in marks)

        enter, leave = last(ALT_SCREEN_ENTER), last(ALT_SCREEN_LEAVE)
        if enter > leave:
            return self.start + enter  # the program draws its whole screen from there
        floor = len(buf) - tail
        if floor > 0:
            newline = buf.find(b"\n", floor)
            floor = newline + 1 if 0 <= newline < len(buf) - 1 else floor
        return self.start + max(0, floor, last(SCREEN_MARKS))

    def __init__(self, capacity=RING_CAPACITY):
        self.capacity = capacity
        self._buf = bytearray()
        self.end = 0  # absolute offset one past the newest byte

    @property
    def start(self):
        return self.end - len(self._buf)

    def write(self, data):
        self._buf += data
        self.end += len(data)
        excess = len(self._buf) - self.capacity
        if excess > 0:
            del self._buf[:excess]

    def read(self, offset, max_bytes):
        """-> (data, lost, new_offset): *lost* bytes were overwritten before *offset*."""
        lost = 0
        if offset < self.start:
            lost, offset = self.start - offset, self.start
        offset = min(offset, self.end)
        i = offset - self.start
        data = bytes(self._buf[i:i + max_bytes])
        return data, lost, offset + len(data)


class OutputSkipped(Exception):
    """The user interrupted a flood: *count* unread bytes were dropped on
    purpose.  Told only to a client that asked for a read window (it counts
    every byte it has, for pty.AttachAt)."""

    def __init__(self, count):
        super().__init__(f"{SKIP_PREFIX}{count} bytes")
        self.count = count


class Follower:
    """One attached reader of a session.

    Up to *max_pending* reads may wait (1 unless the client asked for a read
    window); they are answered oldest first.  A client keeps at most that
    many reads out, so a new read means it has received the reply to the
    read *max_pending* back: that is how far the session is known drained.
    """

    def __init__(self, session, offset, report_loss_as_error):
        self.session = session
        self.offset = offset
        self.lost = 0
        self.max_pending = 1
        self._report_as_error = report_loss_as_error
        self._pending = collections.deque()  # (Deferred, max_bytes), oldest first
        self._reply_ends = collections.deque([offset])  # our offset after each reply not yet known delivered
        self._skipped = 0
        self.detached = False

    def read(self, max_bytes):
        if len(self._pending) >= self.max_pending:
            return defer.fail(RuntimeError("a pty.Read is already pending"))
        max_bytes = max(1, min(int(max_bytes), MAX_READ))
        # Everything up to the reply max_pending back is delivered (a reply in
        # flight on a dropped link is not, and must survive for the reattach).
        while len(self._reply_ends) >= self.max_pending:
            self.session.drained_to = max(self.session.drained_to, self._reply_ends.popleft())
        if self._skipped:
            skipped, self._skipped = self._skipped, 0
            self._reply_ends.append(self.offset)
            return defer.fail(OutputSkipped(skipped))
        result = self._take(max_bytes)
        if result is not None:
            return result
        d = defer.Deferred(self._cancelled)
        self._pending.append((d, max_bytes))
        return d

    def _cancelled(self, d):
        self._pending = collections.deque(p for p in self._pending if p[0] is not d)

    def _take(self, max_bytes):
        """A fired Deferred if there is something to say, else None."""
        result = self._answer(max_bytes)
        if result is not None:
            self._reply_ends.append(self.offset)
            self.session._maybe_resume()
        return result

    def _answer(self, max_bytes):
        ring = self.session.ring
        data, lost, offset = ring.read(self.offset, max_bytes)
        if lost:
            self.lost += lost
            self.offset += lost
            if self._report_as_error:
                return defer.fail(OutputLost(lost))
            notice = f"\r\n[skypty: {lost} bytes of output were lost]\r\n".encode()
            self.offset = offset
            return defer.succeed(notice + data)
        if data:
            self.offset = offset
            return defer.succeed(data)
        if self.session.ended:
            return defer.fail(ShellEnded("EOF"))
        return None

    def _wake(self):
        while self._pending:
            d, max_bytes = self._pending[0]
            result = self._take(max_bytes)
            if result is None:
                return
            self._pending.popleft()
            result.chainDeferred(d)

    def discard(self):
        """Skip what this follower has not read yet (the user interrupted
        a flood); -> bytes skipped.  A client counting offsets is told with
        its next read; others just see the output resume."""
        skipped = self.session.ring.end - self.offset
        if skipped > 0:
            self.offset = self.session.ring.end
            if self._report_as_error:
                self._skipped += skipped
            self.session._maybe_resume()
        return max(0, skipped)

    def detach(self):
        if not self.detached:
            self.detached = True
            pending, self._pending = self._pending, collections.deque()
            for d, _ in pending:
                d.errback(ShellEnded("detached"))
            self.session._follower_gone(self)


@implementer(IOutputSink)
class Session:
    def __init__(self, registry, session_id, owner, command):
        self.registry = registry
        self.id = session_id
        self.owner = owner
        self.command = command
        self.ring = OutputRing()
        self.followers = []
        self.process = None
        self.status = None
        self.created = registry.clock.seconds()
        self.idle_since = self.created
        self.drained_to = 0  # the furthest offset a client is known to have received
        self.paused = False  # the shell's output is not read: its attached reader is behind

    @property
    def ended(self):
        return self.status is not None

    def output_received(self, data):
        self.ring.write(data)
        for f in list(self.followers):
            f._wake()
        # While someone is attached, the shell waits for them (as over ssh)
        # instead of the ring overwriting what they have not read; the most
        # advanced follower sets the pace (a stale one, from a connection
        # whose client has reattached on another, holds nobody up).
        # Detached, the shell runs on and the ring keeps the latest output.
        if self.followers and not self.paused and self._lag() > PAUSE_LAG and self.process is not None:
            self.paused = True
            self.process.pause_output()

    def _lag(self):
        return self.ring.end - max(f.offset for f in self.followers) if self.followers else 0

    def _maybe_resume(self):
        if self.paused and self._lag() < RESUME_LAG:
            self.paused = False
            if self.process is not None:
                self.process.resume_output()

    def output_ended(self, status):
        self.status = status
        for f in list(self.followers):
            f._wake()
        self._forget_if_finished()

    def _forget_if_finished(self):
        if self.ended and not self.followers and self.drained_to >= self.ring.end:
            self.registry.forget(self.id, "shell exited")

    def follow(self, offset=None, report_loss_as_error=False):
        f = Follower(self, self.ring.start if offset is None else offset, report_loss_as_error)
        self.followers.append(f)
        return f

    def _follower_gone(self, follower):
        if follower in self.followers:
            self.followers.remove(follower)
        self._maybe_resume()
        if not self.followers:
            self.idle_since = self.registry.clock.seconds()
            self._forget_if_finished()

    def describe(self):
        return {
            "id": self.id, "owner": self.owner.hex(), "command": self.command,
            "attached": len(self.followers), "created": self.created,
            "idle_since": None if self.followers else self.idle_since,
        }


class SessionRegistry:
    log = Logger()

    def __init__(self, reactor, ttl=300.0, sweep_interval=30.0, clock=None):
        self.reactor = reactor
        self.clock = clock or reactor
        self.ttl = ttl
        self.sweep_interval = sweep_interval
        self._sessions = {}
        self._sweeper = None

    def start(self, owner, name, args, env, rows, cols):
        session_id = os.urandom(8).hex()
        session = Session(self, session_id, owner, " ".join([name or "", *args]).strip())
        session.process = PtyProcess.spawn(self.reactor, name, args, env, rows, cols, sink=session)
        self._sessions[session_id] = session
        self.log.info("session {sid} started for {pk}: {cmd}", sid=session_id, pk=owner.hex(),
                      cmd=session.command)
        return session

    def get(self, session_id):
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFound()
        return session

    def attach(self, session_id, owner, offset=None, report_loss_as_error=False):
        session = self.get(session_id)
        if session.owner != owner:
            raise SessionOwnedByOther()
        return session.follow(offset, report_loss_as_error)

    def stop(self, session_id):
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session.process.stop()
            self.log.info("session {sid} stopped", sid=session_id)

    def forget(self, session_id, why):
        session = self._sessions.pop(session_id, None)
        if session is not None:
            if session.process.running:
                session.process.stop()
            self.log.info("session {sid} ended: {why}", sid=session_id, why=why)

    def forget_owned_by(self, owners_gone, why):
        """End every session (attached or detached) whose owner
        *owners_gone(owner)* says is gone, e.g. taken off the whitelist."""
        for session in list(self._sessions.values()):
            if owners_gone(session.owner):
                self.forget(session.id, why)

    def list(self):
        return [s.describe() for s in self._sessions.values()]

    def __len__(self):
        return len(self._sessions)

    def __contains__(self, session_id):
        return session_id in self._sessions

    def sweep(self):
        now = self.clock.seconds()
        for session in list(self._sessions.values()):
            if not session.followers and now - session.idle_since >= self.ttl:
                self.forget(session.id, "idle for {:.0f}s".format(now - session.idle_since))

    def start_sweeping(self):
        if self._sweeper is None:
            self._sweeper = task.LoopingCall(self.sweep)
            self._sweeper.clock = self.clock
            self._sweeper.start(self.sweep_interval, now=False)

    def stop_all(self):
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None
        ended = []
        for session in list(self._sessions.values()):
            ended.append(session.process.when_ended())
            self.forget(session.id, "host stopping")
        return defer.DeferredList(ended)


from hypothesis import given, settings, strategies as st
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from skypty.host.persist import (
    ERR_NOT_FOUND, ERR_OTHER_OWNER, OutputLost, OutputRing, SessionRegistry,
)
from skypty.host.shell import ShellEnded
from skypty.keys import generate_keypair
from tests.procutil import pid_alive, wait_until, zombie_children

ALICE, _ = generate_keypair()
BOB, _ = generate_keypair()


@given(st.lists(st.tuples(st.binary(min_size=1, max_size=5000), st.integers(0, 6000)), max_size=60),
       st.integers(64, 4096))
@settings(max_examples=200, deadline=None)
def test_ring_followers_see_the_stream_with_gaps_reported(ops, capacity):
    ring = OutputRing(capacity)
    stream = bytearray()
    offset, seen, lost_total = 0, bytearray(), 0
    for data, want in ops:
        ring.write(data)
        stream += data
        assert ring.end - ring.start <= capacity
        chunk, lost, offset2 = ring.read(offset, want)
        # What the follower gets is exactly the stream at its (advanced) offset.
        assert chunk == bytes(stream[offset + lost:offset + lost + len(chunk)])
        lost_total += lost
        seen += chunk
        offset = offset2
    assert len(seen) + lost_total == offset


class Registry:
    def __init__(self, testcase, ttl=300):
        self.clock = task.Clock()
        self.registry = SessionRegistry(reactor, ttl=ttl, sweep_interval=30, clock=self.clock)
        self.registry.start_sweeping()
        testcase.addCleanup(self.registry.stop_all)


@defer.inlineCallbacks
def read_until(follower, needle, limit=65536):
    buf = b""
    while needle not in buf:
        buf += yield follower.read(limit)
    return buf


class SessionTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_detach_and_reattach_replays_in_order(self):
        r = Registry(self).registry
        s = r.start(ALICE, "sh", [], ["TERM=dumb"], 24, 80)
        f = r.attach(s.id, ALICE)
        s.process.write(b"echo one-$((40+2))\n")
        yield read_until(f, b"one-42")
        f.detach()
        s.process.write(b"echo two-$((40+3))\n")
        yield wait_until(lambda: b"two-43" in s.ring.read(0, 1 << 20)[0])
        g = r.attach(s.id, ALICE)  # reference-style: the whole ring again
        replay = yield read_until(g, b"two-43")
        self.assertLess(replay.index(b"one-42"), replay.index(b"two-43"))
        h = r.attach(s.id, ALICE, offset=s.ring.end)  # skypty-style: nothing twice
        self.assertEqual(h.offset, s.ring.end)

    def test_ownership_and_missing_ids(self):
        r = Registry(self).registry
        s = r.start(ALICE, "sh", [], [], 24, 80)
        e = self.assertRaises(LookupError, r.attach, s.id, BOB)
        self.assertEqual(str(e), ERR_OTHER_OWNER)
        e = self.assertRaises(LookupError, r.attach, "00" * 8, ALICE)
        self.assertEqual(str(e), ERR_NOT_FOUND)
        self.assertEqual(len(s.id), 16)
        int(s.id, 16)

    @defer.inlineCallbacks
    def test_reaped_at_ttl_not_before(self):
        holder = Registry(self)
        r, clock = holder.registry, holder.clock
        s = r.start(ALICE, "sh", ["-c", "sleep 1000 & sleep 1000"], [], 24, 80)
        r.attach(s.id, ALICE).detach()
        clock.advance(270)  # sweeps at 30..270: idle 270 s < 300
        self.assertIn(s.id, r)
        clock.advance(30)  # sweep at 300
        self.assertNotIn(s.id, r)
        yield s.process.when_ended()
        yield wait_until(lambda: not pid_alive(s.process.pid))
        self.assertEqual(zombie_children(), [])

    @defer.inlineCallbacks
    def test_attached_session_is_never_reaped(self):
        holder = Registry(self)
        s = holder.registry.start(ALICE, "sh", [], [], 24, 80)
        holder.registry.attach(s.id, ALICE)
        holder.clock.advance(3000)
        self.assertIn(s.id, holder.registry)
        holder.registry.stop(s.id)
        yield s.process.when_ended()

    @defer.inlineCallbacks
    def test_exited_shell_is_forgotten_at_once(self):
        r = Registry(self).registry
        s = r.start(ALICE, "sh", ["-c", "exit 0"], [], 24, 80)
        yield s.process.when_ended()
        self.assertNotIn(s.id, r)

    @defer.inlineCallbacks
    def test_exited_shell_is_forgotten_when_its_follower_drains(self):
        r = Registry(self).registry
        s = r.start(ALICE, "sh", ["-c", "echo bye"], [], 24, 80)
        f = r.attach(s.id, ALICE)
        out = yield read_until(f, b"bye")
        yield s.process.when_ended()
        yield self.assertFailure(f.read(100), ShellEnded)
        f.detach()
        self.assertNotIn(s.id, r)
        self.assertIn(b"bye", out)

    @defer.inlineCallbacks
    def test_gap_beyond_the_ring_is_reported(self):
        r = Registry(self).registry
        s = r.start(ALICE, "sh", [], [], 24, 80)
        f = r.attach(s.id, ALICE, offset=0, report_loss_as_error=True)
        f.detach()
        s.process.write(b"head -c 600000 /dev/zero | tr '\\0' x; echo; echo done-$((1+1))\n")
        yield wait_until(lambda: b"done-2" in s.ring.read(s.ring.start, 1 << 20)[0])
        g = r.attach(s.id, ALICE, offset=100, report_loss_as_error=True)
        failure = yield self.assertFailure(g.read(65536), OutputLost)
        self.assertEqual(failure.count, s.ring.start - 100)
        rest = yield read_until(g, b"done-2")
        self.assertTrue(rest)
        plain = r.attach(s.id, ALICE, offset=100)
        first = yield plain.read(65536)
        self.assertIn(b"bytes of output were lost", first)

    @defer.inlineCallbacks
    def test_two_followers_at_their_own_offsets(self):
        r = Registry(self).registry
        s = r.start(ALICE, "cat", [], [], 24, 80)
        a = r.attach(s.id, ALICE)
        s.process.write(b"first\n")
        yield read_until(a, b"first")
        # the tty's echo and cat's own copy arrive separately: wait for both
        yield wait_until(lambda: s.ring.read(0, 1 << 20)[0].count(b"first") == 2)
        b = r.attach(s.id, ALICE, offset=s.ring.end)
        s.process.write(b"second\n")
        got_b = yield read_until(b, b"second")
        self.assertNotIn(b"first", got_b)
        got_a = yield read_until(a, b"second")
        self.assertIn(b"second", got_a)


class UnreadOutputTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_exited_shell_with_unread_output_waits_for_a_reattach(self):
        holder = Registry(self)
        r = holder.registry
        s = r.start(ALICE, "sh", ["-c", "echo the-end"], [], 24, 80)
        r.attach(s.id, ALICE).detach()  # the link drops before anything was read
        yield s.process.when_ended()
        self.assertIn(s.id, r)  # kept: its output has not been read
        f = r.attach(s.id, ALICE, offset=0)
        out = yield read_until(f, b"the-end")
        yield self.assertFailure(f.read(100), ShellEnded)
        f.detach()
        self.assertNotIn(s.id, r)  # everything delivered: reaped at once
        self.assertIn(b"the-end", out)

    @defer.inlineCallbacks
    def test_unread_output_of_an_exited_shell_is_reaped_at_ttl(self):
        holder = Registry(self)
        s = holder.registry.start(ALICE, "sh", ["-c", "echo unread"], [], 24, 80)
        yield s.process.when_ended()
        self.assertIn(s.id, holder.registry)
        holder.clock.advance(300)
        self.assertNotIn(s.id, holder.registry)

"""The sans-I/O cores behind #23: the client's read window and contact
watch, the host's in-order reads and interrupt flush."""

import os
import pty
import termios

from twisted.internet import task

from skypty.client.linkwatch import (
    GROW_BELOW, MAX_WINDOW, MIN_WINDOW, READ_SIZE, SHRINK_ABOVE, START_WINDOW, ContactWatch, ReadWindow, contact_timers,
)
from skypty.host.persist import OutputSkipped, SessionRegistry, Session
from skypty.host.shell import COALESCE, DirectReader, ShellEnded, interrupt_written
from skypty.wire.rpc import RPCError

FULL = b"x" * READ_SIZE


# -- ReadWindow ---------------------------------------------------------------------------

def test_a_host_without_read_ahead_gets_one_read_at_a_time():
    w = ReadWindow(limit=1)
    assert w.wanted() == 1
    w.sent(1, 0.0)
    assert w.wanted() == 0
    assert w.ready({1: FULL}, 0.2) == [FULL]
    assert w.wanted() == 1 and w.size == 1  # never grows past what the host allows


def test_replies_are_handed_out_in_the_order_the_reads_were_sent():
    w = ReadWindow(limit=8)
    for seq in (1, 2, 3):
        w.sent(seq, 0.0)
    results = {3: b"c", 2: b"b", 99: b"a write's reply"}
    assert w.ready(results, 0.1) == []  # read 1 is not back: 2 and 3 wait
    assert 2 in w and 3 in w and results == {3: b"c", 2: b"b", 99: b"a write's reply"}
    results[1] = b"a"
    assert w.ready(results, 0.1) == [b"a", b"b", b"c"]
    assert results == {99: b"a write's reply"} and len(w) == 0


def _steady_window(w, rtt, bdp_reads, seconds=12.0):
    """Full replies through a path of round trip *rtt* whose bottleneck
    carries *bdp_reads* reads per round trip, for *seconds*: a reply leaves
    the bottleneck one service time after the one before it, and arrives no
    sooner than a round trip after its read was sent (what does not fit
    queues).  The client sends a new read as each reply arrives.
    -> the window's size at the end."""
    seq, last_arrival, service = 0, 0.0, rtt / bdp_reads
    in_flight = []  # (seq, sent at), oldest first
    now = 0.0
    while now < seconds:
        while w.wanted() > 0:
            seq += 1
            w.sent(seq, now)
            in_flight.append((seq, now))
        oldest, sent_at = in_flight.pop(0)
        now = last_arrival = max(sent_at + rtt, last_arrival + service)
        w.ready({oldest: FULL}, now)
    return w.size


def test_the_window_grows_while_full_replies_take_one_round_trip():
    w = ReadWindow(limit=MAX_WINDOW)
    w.rtt_sample(0.2)
    assert w.size == START_WINDOW
    assert _steady_window(w, 0.2, bdp_reads=100) == MAX_WINDOW


def test_the_window_stays_near_one_bandwidth_delay_product():
    """A 1 MB/s bottleneck behind 200 ms holds ~3 reads: more in flight
    would only queue (and delay a Ctrl-C)."""
    w = ReadWindow(limit=MAX_WINDOW, size=MAX_WINDOW)
    w.rtt_sample(0.2)
    size = _steady_window(w, 0.2, bdp_reads=3)
    assert 3 + GROW_BELOW <= size <= 3 + SHRINK_ABOVE + 1


def test_the_window_keeps_ahead_of_tcp_slow_start():
    """A fresh connection: TCP's window doubles every round trip from ~14 KB
    and there is no bottleneck.  Replies come back late only because TCP's
    window is still small; the read window must not read that as a queue
    (it did: 8 reads shrank to 7 and a cold 2 MB `cat` took 1.8 s at 200 ms
    where ssh took 1.6 s)."""
    w = ReadWindow(limit=MAX_WINDOW, size=MIN_WINDOW)  # from the smallest: it must double its way up
    w.rtt_sample(0.2)
    seq, now, cwnd_reads, sizes = 0, 0.0, 14_000 / READ_SIZE, []
    for _ in range(12):
        while w.wanted() > 0:
            seq += 1
            w.sent(seq, now)
        now += 0.2 * max(1.0, len(w) / cwnd_reads)  # what TCP's window does not cover waits
        cwnd_reads *= 2 ** (0.2 * max(1.0, len(w) / cwnd_reads) / 0.2)  # it doubles per round trip
        w.ready({s: FULL for s, _, _ in list(w._order)}, now)
        sizes.append(w.size)
    assert sizes == sorted(sizes), f"the window shrank during slow start: {sizes}"
    assert w.size == MAX_WINDOW


def test_a_bottleneck_from_the_start_ends_the_startup_at_once():
    """2 MB/s behind 200 ms (~6 reads in flight): a Ctrl-C must not wait for
    a startup window's worth to drain."""
    w = ReadWindow(limit=MAX_WINDOW)
    w.rtt_sample(0.2)
    _steady_window(w, 0.2, bdp_reads=6, seconds=2.5)  # ~1.3 s to move the first window's 1 MiB
    assert not w.starting
    assert w.size <= 6 + SHRINK_ABOVE + 1


def test_short_replies_and_errors_do_not_move_the_window():
    w = ReadWindow(limit=MAX_WINDOW)
    w.rtt_sample(0.001)
    w.sent(1, 0.0)
    w.sent(2, 0.0)
    err = RPCError("EOF")
    assert w.ready({1: b"prompt$ ", 2: err}, 30.0) == [b"prompt$ ", err]
    assert w.size == START_WINDOW


# -- ContactWatch -------------------------------------------------------------------------

def test_quiet_means_a_ping_then_a_notice_then_back():
    c = ContactWatch(0.0, quiet_ping=2, notice_after=8)
    assert c.due(1.0) == [] and c.deadline() == 2.0
    assert c.due(2.0) == ["ping"]
    assert c.deadline() == 4.0
    assert c.due(4.0) == ["ping"]
    assert c.due(6.0) == ["ping"]
    assert c.due(8.0) == ["ping", "silent"]
    assert c.due(9.0) == []  # said once per silence
    assert c.heard(30.0) == 30.0  # -> "back after 30 s"
    assert c.heard(31.0) is None
    assert c.due(32.0) == []


def test_traffic_keeps_the_pings_away():
    c = ContactWatch(0.0, quiet_ping=2, notice_after=8)
    for t in range(1, 60):
        c.heard(float(t))
        assert c.due(t + 0.5) == []


def test_a_persistent_session_declares_the_path_dead_instead_of_waiting():
    c = ContactWatch(0.0, quiet_ping=2, notice_after=8, dead_after=5)
    assert c.due(2.0) == ["ping"]
    assert c.deadline() == 4.0
    c.due(4.0)
    assert c.deadline() == 5.0
    assert c.due(5.0) == ["dead"]
    assert c.due(20.0) == ["ping"]  # dead once; never "silent": the reattach says it


def test_contact_timers_can_be_shortened(monkeypatch):
    monkeypatch.setenv("SKYPTY_CONTACT_TIMERS", "0.2,1,1.5")
    assert contact_timers() == (0.2, 1.0, 1.5)
    monkeypatch.setenv("SKYPTY_CONTACT_TIMERS", "nonsense")
    assert contact_timers()[1] <= 10  # the default says "no contact" within 10 s


# -- the host: reads in order, flush on interrupt -----------------------------------------

def _values(ds):
    out = []
    for d in ds:
        d.addBoth(out.append)
    return out


def test_direct_reader_answers_waiting_reads_in_order():
    clock = task.Clock()
    r = DirectReader(clock=clock)
    r.max_pending = 3
    ds = [r.read(4) for _ in range(3)]
    got = _values(ds)
    assert got == []
    r.output_received(b"abcdefghij")  # one chunk feeds the reads in turn
    assert got == [b"abcd", b"efgh"]
    clock.advance(COALESCE)  # the short rest waits a moment for more
    assert got == [b"abcd", b"efgh", b"ij"]


def test_a_lone_echo_is_answered_at_once():
    clock = task.Clock()
    r = DirectReader(clock=clock)
    r.max_pending = 8
    got = _values([r.read(READ_SIZE) for _ in range(8)])
    r.output_received(b"l")
    assert got == [b"l"]
    clock.advance(0.2)  # the next key, a human's moment later
    r.output_received(b"s")
    assert got == [b"l", b"s"]


def test_a_burst_fills_each_read_instead_of_spending_one_per_pty_chunk():
    """The window is counted in reads: 8 reads answered with 4 KiB each
    carry 32 KiB over a slow path, not 512 KiB."""
    clock = task.Clock()
    r = DirectReader(clock=clock)
    r.max_pending = 8
    got = _values([r.read(READ_SIZE) for _ in range(8)])
    for _ in range(40):  # a `cat`: the pty hands out 4 KiB at a time, 1 ms apart
        r.output_received(b"y" * 4096)
        clock.advance(0.001)
    assert [len(g) for g in got] == [4096, READ_SIZE, READ_SIZE]
    clock.advance(COALESCE)  # the producer paused: what is there goes out
    assert [len(g) for g in got] == [4096, READ_SIZE, READ_SIZE, 40 * 4096 - 4096 - 2 * READ_SIZE]


def test_the_end_of_output_is_not_held_back():
    clock = task.Clock()
    r = DirectReader(clock=clock)
    r.max_pending = 2
    got = _values([r.read(10), r.read(10)])
    r.output_received(b"12345")
    r.output_received(b"67")
    r.output_ended(0)
    assert got[:2] == [b"12345", b"67"]


def test_direct_reader_refuses_more_reads_than_allowed():
    r = DirectReader()
    r.read(10)
    failed = []
    r.read(10).addErrback(failed.append)
    assert failed and "already pending" in str(failed[0].value)


def test_direct_reader_discard_drops_the_queue_and_resumes_the_shell():
    class Proc:
        paused = False

        def pause_output(self):
            self.paused = True

        def resume_output(self):
            self.paused = False

    r = DirectReader(high_water=10, low_water=5)
    r.process = Proc()
    r.output_received(b"x" * 20)
    assert r.process.paused
    assert r.discard() == 20
    assert not r.process.paused and r.queued == 0
    r.output_received(b"prompt$ ")
    assert _values([r.read(100)]) == [b"prompt$ "]


def test_direct_reader_ends_every_waiting_read():
    r = DirectReader()
    r.max_pending = 2
    got = _values([r.read(10), r.read(10)])
    r.output_ended(0)
    assert [f.check(ShellEnded) for f in got] == [ShellEnded, ShellEnded]


def _session():
    clock = task.Clock()
    registry = SessionRegistry(clock, clock=clock)
    return Session(registry, "s1", b"k", "sh")


def test_follower_skips_on_interrupt_and_tells_a_counting_client():
    s = _session()
    f = s.follow(0, report_loss_as_error=True)
    f.max_pending = 4
    s.output_received(b"a" * 1000)
    assert _values([f.read(100)]) == [b"a" * 100]
    assert f.discard() == 900
    (skip,) = _values([f.read(100)])
    assert skip.check(OutputSkipped) and skip.value.count == 900
    s.output_received(b"prompt$ ")
    assert _values([f.read(100)]) == [b"prompt$ "]


def test_follower_skips_silently_for_a_client_that_does_not_count():
    s = _session()
    f = s.follow(0)
    s.output_received(b"a" * 1000)
    f.discard()
    s.output_received(b"prompt$ ")
    assert _values([f.read(100)]) == [b"prompt$ "]


def test_follower_window_knows_what_was_delivered():
    """A client keeping 2 reads out: the third read proves the first reply arrived."""
    s = _session()
    f = s.follow(0, report_loss_as_error=True)
    f.max_pending = 2
    s.output_received(b"x" * 300)
    f.read(100)
    f.read(100)
    assert s.drained_to == 0
    f.read(100)
    assert s.drained_to == 100


def test_follower_answers_waiting_reads_in_order():
    s = _session()
    f = s.follow(0)
    f.max_pending = 3
    got = _values([f.read(4), f.read(4), f.read(4)])
    s.output_received(b"abcdef")
    assert got == [b"abcd", b"ef"]
    s.output_received(b"gh")
    assert got == [b"abcd", b"ef", b"gh"]


def test_interrupt_written_follows_the_terminal_settings():
    master, slave = pty.openpty()
    try:
        assert interrupt_written(master, b"\x03")
        assert not interrupt_written(master, b"ls\r")
        attrs = termios.tcgetattr(slave)
        attrs[6][termios.VINTR] = b"\x07"
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        assert interrupt_written(master, b"\x07") and not interrupt_written(master, b"\x03")
        attrs[3] &= ~termios.ISIG  # raw mode (an editor): ^C is a key
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        assert not interrupt_written(master, b"\x07")
    finally:
        os.close(master)
        os.close(slave)


# -- what a new viewer of a session is replayed --------------------------------------------

def _ring(data, capacity=256 * 1024):
    from skypty.host.persist import OutputRing

    ring = OutputRing(capacity)
    ring.write(data)
    return ring


def test_screen_starts_at_the_last_clear():
    data = b"old line\n" * 1000 + b"\x1b[H\x1b[2J" + b"$ ls\nfiles\n$ "
    ring = _ring(data)
    assert data[ring.screen_start():] == b"\x1b[2J$ ls\nfiles\n$ "


def test_screen_without_a_clear_is_a_bounded_tail_from_a_line_start():
    data = b"".join(b"line %06d\n" % i for i in range(30000))  # 330 KB: the ring keeps 256 KiB
    ring = _ring(data)
    start = ring.screen_start(tail=4096)
    replay = data[start:]
    assert 4096 - 12 <= len(replay) <= 4096 and replay.startswith(b"line ")
    assert ring.end - start == len(replay) and start > ring.start


def test_screen_of_a_full_screen_program_starts_where_it_entered():
    vim = b"\x1b[?1049h\x1b[H\x1b[2Jvim screen" + b"\x1b[5;1Hedit" * 5000
    data = b"shell output\n" * 100 + vim
    ring = _ring(data)
    assert data[ring.screen_start(tail=1024):] == vim  # its later partial redraws need that start
    data += b"\x1b[?1049l$ "  # back in the shell: a clear or tail again
    ring = _ring(data)
    assert data[ring.screen_start(tail=1024):] != vim and ring.end - ring.screen_start(tail=1024) <= 1024


# -- reattaching through a local host ------------------------------------------------------

def test_a_reattach_retries_a_local_hosts_passing_refusals(monkeypatch, capsys):
    """Through a local host whose dmsg session died with the link, the dial
    times out a few times before it works: keep trying.  A refusal that
    will not pass (not whitelisted) ends the reattach at once."""
    from skypty.client import interactive
    from skypty.client.errors import ClientError

    monkeypatch.setattr(interactive.time, "sleep", lambda s: None)

    def failing(reason, times):
        calls = []

        def opener(timeout=None):
            calls.append(timeout)
            if len(calls) <= times:
                e = ClientError(f"host did not answer in time ({reason})")
                e.reason = reason
                raise e
            return object(), b""
        return opener, calls

    opener, calls = failing("timeout", 3)
    assert interactive._reconnect(opener, "s1") is not None and len(calls) == 4
    assert capsys.readouterr().err.count("still trying") == 1  # said once, not per attempt

    opener, calls = failing("not-whitelisted", 3)
    assert interactive._reconnect(opener, "s1") is None and len(calls) == 1


def test_a_reply_held_up_by_a_lost_packet_does_not_shrink_the_window():
    w = ReadWindow(limit=MAX_WINDOW, size=8)
    w.rtt_sample(0.1)
    seq = 0
    # 64 KiB is ~45 packets: at 2 % loss most replies wait for a retransmission
    for _ in range(10):  # rounds at 100 ms; 3 replies in 5 come 300 ms late
        for i in range(w.size):
            seq += 1
            w.sent(seq, 0.0)
            w.ready({seq: FULL}, 0.4 if i % 5 < 3 else 0.1)
    assert w.size == MAX_WINDOW


def test_an_attached_session_waits_for_its_reader_instead_of_overwriting():
    from skypty.host.persist import PAUSE_LAG, RESUME_LAG

    class Proc:
        paused = False

        def pause_output(self):
            self.paused = True

        def resume_output(self):
            self.paused = False

    s = _session()
    s.process = Proc()
    s.output_received(b"x" * (PAUSE_LAG + 1))  # nobody attached: the ring just keeps the latest
    assert not s.process.paused
    f = s.follow(s.ring.end, report_loss_as_error=True)
    stale = s.follow(0, report_loss_as_error=True)  # an abandoned connection's reader
    f.max_pending = 16
    s.output_received(b"y" * (PAUSE_LAG + 1))
    assert s.process.paused  # the live reader is behind: the shell waits
    while s.ring.end - f.offset >= RESUME_LAG:
        f.read(64 * 1024)
    assert not s.process.paused and stale.offset == 0
    s.output_received(b"z" * (PAUSE_LAG + 1))
    assert s.process.paused
    f.detach()
    stale.detach()
    assert not s.process.paused  # detached: it runs on


def test_a_hosts_notices_are_parsed_without_trusting_them():
    import io

    from skypty.client.interactive import _deliver
    from skypty.wire.types import LOST_PREFIX, SKIP_PREFIX

    out = io.BytesIO()
    replies = [(1, b"a"), (2, RPCError(SKIP_PREFIX + "100 bytes")), (3, RPCError(SKIP_PREFIX + "lots")),
               (4, RPCError(LOST_PREFIX + "9" * 40)), (5, b"b")]
    assert _deliver(replies, out, 0) == (False, 102)
    assert out.getvalue() == b"ab"

"""How the interactive client copes with a real link (sans-I/O: times in,
decisions out; no sockets, no clock of its own).

``ReadWindow``: several ``pty.Read`` calls in flight toward a host that
allows it (skypty's ``pty.ReadAhead``), their replies handed out in the order
the reads were sent.  One read per round trip caps a 200 ms path near
320 KB/s.  A fresh window starts as BBR does: it doubles once per round while
the delivery rate still grows by a quarter (TCP's own slow start is then the
limit, and replies come back late only because its window is still small),
and when the rate stops growing it settles at one bandwidth-delay product
plus a little.  From then on, as TCP Vegas does, it grows (by half) while full
replies come back about one round trip after they were asked for, and
shrinks (by one) when even the round's fastest took much longer: they queue
on the link, and more in flight would only delay a Ctrl-C.

``ContactWatch``: a ``pty.Ping`` when nothing was heard for a while, a status
line when nothing was heard for longer (as mosh says "last contact"), and,
for a persistent session, the verdict that the path is dead and the session
should be reattached on a new connection (a roamed client's old path never
comes back; waiting for TCP to give up takes minutes).
"""

import collections
import os

READ_SIZE = 64 * 1024  # the most a pty.Read may ask for
MIN_WINDOW, START_WINDOW, MAX_WINDOW = 2, 16, 16
# Vegas thresholds, in reads: fewer than GROW reads' worth queued on the path
# -> one more read; more than SHRINK -> one fewer.
GROW_BELOW, SHRINK_ABOVE = 2.0, 4.0
# Startup ends after this many rounds in a row whose delivery rate did not
# beat the best by RATE_GROWTH (BBR's full-pipe test: 3 rounds, 25 %).
RATE_GROWTH, FLAT_ROUNDS = 1.25, 3
STARTUP_GAIN = 2.0  # startup keeps at most this many bandwidth-delay products in flight

QUIET_PING = 2.0   # ping after this long without a byte from the host
NO_CONTACT = 8.0   # then say so (a plain shell: nothing to do but wait)
DEAD_PATH = 5.0    # a persistent session is reattached on a new connection


def contact_timers():
    """(quiet ping, no-contact notice, dead path) in seconds: the defaults, or
    ``SKYPTY_CONTACT_TIMERS=ping,notice,dead`` (tests, very slow links)."""
    override = os.environ.get("SKYPTY_CONTACT_TIMERS", "")
    try:
        values = tuple(float(v) for v in override.split(","))
        if len(values) == 3 and min(values) > 0:
            return values
    except ValueError:
        pass
    return QUIET_PING, NO_CONTACT, DEAD_PATH


class ReadWindow:
    """pty.Reads in flight, in the order they were sent.

    The loop calls ``sent(seq, now)`` for each read it starts while
    ``wanted()`` is positive, and ``ready(results, now)`` after every pump:
    it pops, in order, the replies at the head of the window."""

    def __init__(self, limit=1, size=None):
        self.limit = limit  # what the host allows (1: the reference's one at a time)
        self.size = min(limit, START_WINDOW if size is None else size)
        self.rtt_min = None
        self.starting = True  # BBR's startup: double per round while the rate grows
        self.best_rate = None  # bytes/s, the best round's
        self._flat = 0
        self._delivered = 0  # bytes of replies handed out so far
        self._order = collections.deque()  # (seq, sent at, bytes delivered when it was sent)
        self._round_min, self._round_rate, self._round_count = None, None, 0
        self._round_mark = None  # the first read sent in this round: its reply ends the round

    def __contains__(self, seq):
        return any(s == seq for s, _, _ in self._order)

    def __len__(self):
        return len(self._order)

    def wanted(self):
        return self.size - len(self._order)

    def sent(self, seq, now):
        if self._round_mark is None:
            self._round_mark = seq
        self._order.append((seq, now, self._delivered))

    def rtt_sample(self, seconds):
        """A round trip that waited for nothing (a ping, a call answered at once)."""
        if seconds >= 0 and (self.rtt_min is None or seconds < self.rtt_min):
            self.rtt_min = seconds

    def ready(self, results, now, with_seq=False):
        """Pop the replies at the head of the window from *results* (seq ->
        value); -> [value, ...] (or [(seq, value), ...]) in the order the
        reads were sent."""
        out = []
        while self._order and self._order[0][0] in results:
            seq, sent_at, delivered_then = self._order.popleft()
            value = results.pop(seq)
            if isinstance(value, (bytes, bytearray)):
                self._delivered += len(value)
                if len(value) >= READ_SIZE:  # a full reply: the host had more than we asked
                    elapsed = now - sent_at
                    rate = (self._delivered - delivered_then) / elapsed if elapsed > 0 else None
                    self._sample(seq, elapsed, rate)
            out.append((seq, value) if with_seq else value)
        return out

    def _sample(self, seq, latency, rate):
        """Judge once per round, on the round's fastest reply and best
        delivery rate (what came in between a read and its reply, per
        second: BBR's sample): one reply held up by a lost packet's
        retransmission says nothing about queues.  A round ends with the
        reply to the first read sent after the last round ended (BBR's
        packet-timed round: about one round trip, so the startup ends within
        a few round trips of the pipe being full), and once the startup is
        over it is also at least a window's worth of full replies."""
        if self.limit <= MIN_WINDOW:
            return
        self.rtt_sample(latency)
        self._round_min = latency if self._round_min is None else min(self._round_min, latency)
        if rate is not None:
            self._round_rate = rate if self._round_rate is None else max(self._round_rate, rate)
        self._round_count += 1
        if self._round_mark is None or seq < self._round_mark:
            return
        if not self.starting and self._round_count < self.size:
            return  # past the startup a round is also a window's worth: fewer say little about a queue
        self._adapt(self._round_min, self._round_rate)
        self._round_min, self._round_rate, self._round_count = None, None, 0
        self._round_mark = None

    def _adapt(self, latency, rate):
        # Reads' worth waiting in queues on the path (Vegas' diff): 0 when
        # replies come back one bare round trip after they were asked for.
        queued = self.size * (1.0 - self.rtt_min / latency) if latency > 0 else 0.0
        if self.starting:
            self._startup(queued, rate)
        elif queued < GROW_BELOW:
            self.size = min(self.limit, MAX_WINDOW, self.size + max(1, self.size // 2))
        elif queued > SHRINK_ABOVE:
            self.size = max(MIN_WINDOW, self.size - 1)

    def _startup(self, queued, rate):
        if rate is None:
            return
        if self.best_rate is None:
            self.best_rate = rate  # the first round: what to beat
            return
        if rate >= self.best_rate * RATE_GROWTH:  # still growing: TCP's slow start is the limit
            self.best_rate = rate
            self._flat = 0
            # ... but never more than twice what the path carries per round trip
            # (BBR's startup gain): what is queued on the way delays a Ctrl-C
            cap = STARTUP_GAIN * self.best_rate * self.rtt_min / READ_SIZE + GROW_BELOW if self.rtt_min else self.size
            self.size = max(self.size, min(self.limit, MAX_WINDOW, self.size * 2, round(cap)))
            return
        self.best_rate = max(self.best_rate, rate)
        self._flat += 1
        if self._flat < FLAT_ROUNDS and queued <= SHRINK_ABOVE:
            return
        # The pipe is full (the rate stopped growing; and replies queue: at
        # once): keep about one bandwidth-delay product in flight.
        self.starting = False
        if self.rtt_min:
            bdp_reads = self.best_rate * self.rtt_min / READ_SIZE
            self.size = max(MIN_WINDOW, min(self.limit, MAX_WINDOW, self.size, round(bdp_reads + GROW_BELOW + 1)))

    def forget(self):
        """The link is gone: nothing is in flight any more."""
        self._order.clear()


class ContactWatch:
    """When to ping, when to say the host is silent, when a path is dead.

    ``heard(now)`` on every byte from the host (-> the seconds of silence
    it ends, if a notice was given, else None); ``due(now)`` -> a list of
    ``"ping"``, ``"silent"`` (once per silence) and ``"dead"`` (once, only
    with *dead_after*); ``deadline()`` -> when to call ``due`` next."""

    def __init__(self, now, quiet_ping=QUIET_PING, notice_after=NO_CONTACT, dead_after=None):
        self.quiet_ping, self.notice_after, self.dead_after = quiet_ping, notice_after, dead_after
        self.last_heard = self.last_ping = now
        self.noticed = self.declared_dead = False

    def heard(self, now):
        silence = now - self.last_heard
        self.last_heard = now
        self.declared_dead = False
        if self.noticed:
            self.noticed = False
            return silence
        return None

    def silence(self, now):
        return now - self.last_heard

    def due(self, now):
        out = []
        quiet = now - self.last_heard
        if quiet >= self.quiet_ping and now - self.last_ping >= self.quiet_ping:
            out.append("ping")
            self.last_ping = now
        if self.dead_after is not None and quiet >= self.dead_after and not self.declared_dead:
            self.declared_dead = True
            out.append("dead")
        elif self.dead_after is None and quiet >= self.notice_after and not self.noticed:
            self.noticed = True
            out.append("silent")
        return out

    def deadline(self):
        times = [max(self.last_heard, self.last_ping) + self.quiet_ping]
        if self.dead_after is not None and not self.declared_dead:
            times.append(self.last_heard + self.dead_after)
        elif self.dead_after is None and not self.noticed:
            times.append(self.last_heard + self.notice_after)
        return min(times)

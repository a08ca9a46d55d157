"""The predictive local echo core (skypty.client.predict), without I/O.

A simulated link: keystrokes reach a fake remote line editor one RTT/2
later, its echo comes back another RTT/2 later, and the write
acknowledgement with it.  The local terminal is a pyte screen fed the
predictor's bytes; the reference is a pyte screen fed only the host's
bytes.  Whatever was predicted, the two must end identical.
"""

import heapq

import pytest

pyte = pytest.importorskip("pyte")

from hypothesis import given, settings, strategies as st  # noqa: E402

from skypty.client import predict as P  # noqa: E402
from skypty.host.shell import TTY_ECHO, TTY_ICANON, TTY_KNOWN  # noqa: E402

ROWS, COLS = 10, 40
RTT = 0.2
RAW = TTY_KNOWN  # readline's modes: no ICANON, no ECHO (it echoes itself)
SECRET = TTY_KNOWN | TTY_ICANON  # read -s, getpass: canonical, echo off


def plain(data):
    """*data* without the underline unconfirmed predictions get on a slow link."""
    return data.replace(b"\x1b[4m", b"").replace(b"\x1b[24m", b"")


def dump(screen):
    """Every cell's text and attributes, and the cursor (pyte's own display
    fails on a wide character's orphaned second half, which output can make)."""
    cells = [[screen.buffer[y][x] for x in range(screen.columns)] for y in range(screen.lines)]
    return cells, (screen.cursor.x, screen.cursor.y)


class LineEditor:
    """The remote: a readline-like editor on one line after a prompt."""

    def __init__(self, prompt="$ ", echo=True):
        self.prompt, self.line, self.pos, self.echo = prompt, "", 0, echo

    def start(self):
        return self.prompt.encode()

    def key(self, data):
        out = []
        for kind, char in P.parse_keys(data):
            if not self.echo:
                continue
            if kind == P.CHAR:
                tail = self.line[self.pos:]
                self.line = self.line[:self.pos] + char + tail
                self.pos += 1
                out.append((char + tail + "\b" * len(tail)).encode())
            elif kind == P.BACKSPACE and self.pos > 0:
                tail = self.line[self.pos:]
                self.line = self.line[:self.pos - 1] + tail
                self.pos -= 1
                out.append(("\b" + tail + " " + "\b" * (len(tail) + 1)).encode())
            elif kind == P.LEFT and self.pos > 0:
                self.pos -= 1
                out.append(b"\b")
            elif kind == P.RIGHT and self.pos < len(self.line):
                out.append(self.line[self.pos].encode())
                self.pos += 1
            elif kind == P.OPAQUE and data == b"\r":
                out.append(b"\r\n" + self.prompt.encode())
                self.line, self.pos = "", 0
        return b"".join(out)


class Session:
    def __init__(self, remote, mode="always", rtt=RTT, flags=None):
        self.remote, self.rtt, self.flags = remote, rtt, flags
        self.predictor = P.Predictor(ROWS, COLS, mode)
        screen = P._pyte()[0]  # pyte's Screen, minus its crash on CSI ? ... m
        self.local = screen(COLS, ROWS)
        self.local_stream = pyte.ByteStream(self.local)
        self.reference = screen(COLS, ROWS)
        self.reference_stream = pyte.ByteStream(self.reference)
        self.now = 0.0
        self.events = []
        self.seq = 0
        self.written = []  # (time, bytes) given to the local terminal
        self._output(remote.start())

    def _at(self, when, what, *args):
        self.seq += 1
        heapq.heappush(self.events, (when, self.seq, what, args))

    def _show(self, data):
        if data:
            self.written.append((self.now, data))
            self.local_stream.feed(data)

    def _output(self, data):
        if self.flags is not None:
            self.predictor.set_flags(self.flags)
        self.reference_stream.feed(data)
        self._show(self.predictor.host_output(data, self.now))

    def type(self, data):
        shown, batch = self.predictor.keys(data, self.now)
        self._show(shown)
        self._at(self.now + self.rtt / 2, "remote", data, batch, self.now)
        return shown

    def run_until(self, when):
        while True:
            deadline = self.predictor.next_deadline()
            nxt = self.events[0][0] if self.events else None
            if deadline is not None and deadline <= when and (nxt is None or deadline < nxt):
                self.now = max(self.now, deadline)
                self._show(self.predictor.tick(self.now))
                continue
            if nxt is None or nxt > when:
                break
            self.now, _, what, args = heapq.heappop(self.events)
            if what == "remote":
                data, batch, sent = args
                echo = self.remote.key(data)
                self._at(self.now + self.rtt / 2, "ack", batch, sent)
                if echo:
                    self._at(self.now + self.rtt / 2, "output", echo)
            elif what == "ack":
                batch, sent = args
                self._show(self.predictor.rtt_sample(self.now - sent, self.now))
                self.predictor.acked(batch, self.now)
            else:
                self._output(args[0])
        self.now = max(self.now, when)

    def settle(self):
        self.run_until(self.now + 10)

    def line(self):
        """The local terminal's cursor row."""
        return self.local.display[self.local.cursor.y]

    def local_dump(self):
        return dump(self.local)

    def reference_dump(self):
        return dump(self.reference)


def test_parse_keys():
    assert P.parse_keys(b"ab\x7f\x1b[D\x1bOC") == [(P.CHAR, "a"), (P.CHAR, "b"), (P.BACKSPACE, ""),
                                                   (P.LEFT, ""), (P.RIGHT, "")]
    assert P.parse_keys(b"a\rb") == [(P.CHAR, "a"), (P.OPAQUE, "")]


def test_host_bits_agree():
    assert (P.TTY_KNOWN, P.TTY_ECHO, P.TTY_ICANON) == (TTY_KNOWN, TTY_ECHO, TTY_ICANON)


def test_nothing_predicted_passes_the_bytes_unchanged():
    p = P.Predictor(ROWS, COLS, "always")
    data = b"\x1b[31mhello\x1b[0m\r\n"
    assert p.host_output(data, 0.0) is data


def test_typing_shows_at_once_after_the_first_confirmation():
    s = Session(LineEditor(), flags=RAW)
    s.run_until(0.01)
    assert s.type(b"l") == b""  # tentative: the host has not shown it can echo yet
    s.run_until(s.now + 0.25)
    assert s.line().startswith("$ l")  # the echo, one RTT later
    assert plain(s.type(b"s")) == b"s"  # now predicted at once, at the cursor
    assert s.type(b" ") == b"\x1b[1C"  # a blank over a blank: only the cursor moves
    assert plain(s.type(b"-")) == b"-"
    assert s.line().startswith("$ ls -")
    s.settle()
    assert s.local_dump() == s.reference_dump()
    assert s.predictor.confirmed == 4 and s.predictor.failed == 0


def test_editing_keys_predicted_and_exact():
    s = Session(LineEditor(), flags=RAW)
    s.type(b"e")
    s.run_until(0.3)
    for key in (b"c", b"h", b"o", b"\x1b[D", b"\x1b[D", b"X", b"\x7f", b"\x1b[C", b"Y", b"\x7f", b"Z"):
        s.type(key)
        s.run_until(s.now + 0.01)
    assert s.line().startswith("$ echZo")
    assert s.predictor.failed == 0
    s.settle()
    assert s.local_dump() == s.reference_dump()
    assert s.reference.display[s.reference.cursor.y].startswith("$ echZo")


def test_no_prediction_of_a_secret():
    s = Session(LineEditor(echo=False), flags=SECRET)
    s.run_until(0.01)
    for key in b"hunter2":
        assert s.type(bytes((key,))) == b""
        s.run_until(s.now + 0.01)
    s.settle()
    assert all(b"h" not in data and b"2" not in data for _, data in s.written)


def test_no_echo_after_enter_stays_hidden_on_a_reference_host():
    """No tty modes from the host (a reference host): after Enter, the first
    keys are tentative, and a prompt that does not echo never confirms them."""
    editor = LineEditor()
    s = Session(editor, flags=None)
    s.type(b"a")
    s.run_until(0.3)
    s.type(b"b")  # confident now
    s.type(b"\r")  # a new prompt...
    s.run_until(1.0)
    editor.echo = False  # ...that does not echo (a password prompt)
    for key in b"secret":
        s.type(bytes((key,)))
        s.run_until(s.now + 0.02)
    s.settle()
    typed_after_enter = b"".join(data for t, data in s.written if t >= 1.0)
    assert not any(c in typed_after_enter for c in b"secrt")
    assert s.local_dump() == s.reference_dump()


def test_misprediction_is_repaired_within_one_rtt():
    editor = LineEditor()
    s = Session(editor, flags=RAW)
    s.type(b"a")
    s.run_until(0.3)
    editor.echo = False  # from now on the remote swallows keys (as vi's normal mode would)
    typed_at = s.now
    assert plain(s.type(b"x")) == b"x"  # predicted, and wrong
    assert s.line().startswith("$ ax")
    s.run_until(typed_at + RTT + s.predictor.grace + 0.001)
    assert s.line().startswith("$ a ")
    assert s.predictor.failed == 1
    assert s.local_dump() == s.reference_dump()
    assert s.predictor.grace < RTT  # repaired within about one RTT of the key's echo being due
    assert s.type(b"y") == b""  # after a failure: tentative again


def test_no_prediction_on_the_alternate_screen():
    s = Session(LineEditor(prompt="\x1b[?1049h\x1b[H~"), flags=RAW)
    s.type(b"a")
    s.run_until(0.3)
    assert s.type(b"b") == b""


def test_underlined_on_a_slow_link_and_undone():
    s = Session(LineEditor(), flags=RAW, rtt=0.3)
    s.type(b"a")
    s.run_until(0.4)
    assert s.type(b"b") == b"\x1b[4mb\x1b[24m"
    s.settle()
    assert s.local_dump() == s.reference_dump()
    assert not s.local.buffer[s.local.cursor.y][3].underscore


def test_auto_turns_on_above_30ms_only():
    fast = Session(LineEditor(), mode="auto", rtt=0.002, flags=RAW)
    for key in b"abcdef":
        fast.type(bytes((key,)))
        fast.run_until(fast.now + 0.01)
    assert fast.predictor.predicted == 0 and not fast.predictor.active
    slow = Session(LineEditor(), mode="auto", rtt=0.1, flags=RAW)
    for key in b"abcdef":
        slow.type(bytes((key,)))
        slow.run_until(slow.now + 0.15)
    assert slow.predictor.active and slow.predictor.predicted > 0


def test_flood_is_not_emulated_and_passes_unchanged():
    p = P.Predictor(ROWS, COLS, "always")
    chunk = b"x" * 1000 + b"\r\n"
    for _ in range(200):
        assert p.host_output(chunk, 0.0) is chunk
    assert p.screen is None  # never emulated
    assert p.backlog_size <= P.FLOOD_BYTES
    p.host_output(b"$ ", 0.0)
    assert p._ready(1.0)  # resynced from the flood's last line: predicting again


def test_flood_keeps_the_alternate_screen_known():
    p = P.Predictor(ROWS, COLS, "always")
    p.host_output(b"\x1b[?1049h", 0.0)
    for _ in range(100):
        p.host_output(b"y" * 1000 + b"\r\n", 0.0)
    assert not p._ready(1.0)
    p.host_output(b"\x1b[?1049l\r$ ", 0.0)
    assert p._ready(1.0)


def test_compact_modes_keeps_the_last_word():
    seqs = [b"\x1b[?1049h", b"\x1b[31m", b"\x1b[0m", b"\x1b[1m", b"\x1b[?1049l", b"\x1b(0", b"\x1b(B"]
    assert P.compact_modes(seqs) == [b"\x1b[?1049l", b"\x1b(B", b"\x1b[1m"]


def test_local_notice_erases_predictions_first():
    s = Session(LineEditor(), flags=RAW)
    s.type(b"a")
    s.run_until(0.3)
    s.type(b"b")
    s._show(s.predictor.local_output(b"\r\n[skypty: note]\r\n", s.now))
    s._show(b"\r\n[skypty: note]\r\n")
    s.reference_stream.feed(b"\r\n[skypty: note]\r\n")
    s.settle()
    assert s.local_dump() == s.reference_dump()


KEYS = st.sampled_from([b"a", b"b", b" ", b"\x7f", b"\x1b[D", b"\x1b[C", b"\r", b"\t", b"xy"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(KEYS, st.floats(0.0, 0.4), st.booleans()), max_size=40),
       st.sampled_from([None, RAW]))
def test_screen_always_ends_as_without_prediction(steps, flags):
    editor = LineEditor()
    s = Session(editor, flags=flags)
    for key, pause, echo in steps:
        editor.echo = echo or key == b"\r"
        s.type(key)
        s.run_until(s.now + pause)
    s.settle()
    assert s.local_dump() == s.reference_dump()


def test_hosts_toml_predict_field():
    from skypty.client import hosts as H
    from skypty.keys import generate_keypair

    key = generate_keypair()[0].hex()
    hosts = H.parse_hosts(f'[slow]\nkey = "{key}"\naddr = "h:1"\npredict = "never"\n')
    assert hosts["slow"].predict == "never"
    assert H.parse_hosts(H.render_hosts(hosts)) == hosts
    with pytest.raises(H.HostsError, match="predict 'sometimes'"):
        H.parse_hosts(f'[a]\nkey = "{key}"\npredict = "sometimes"\n')


def test_predict_mode_precedence(tmp_path, monkeypatch):
    import argparse

    from skypty.client.commands import predict_mode
    from skypty.keys import generate_keypair

    key = generate_keypair()[0].hex()
    (tmp_path / "skypty").mkdir()
    (tmp_path / "skypty" / "hosts.toml").write_text(f'[slow]\nkey = "{key}"\npredict = "always"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("SKYPTY_PREDICT", raising=False)
    assert predict_mode(argparse.Namespace(predict=None), key) == "auto"
    assert predict_mode(argparse.Namespace(predict=None), "slow") == "always"
    assert predict_mode(argparse.Namespace(predict="never"), "slow") == "never"
    monkeypatch.setenv("SKYPTY_PREDICT", "never")
    assert predict_mode(argparse.Namespace(predict=None), key) == "never"
    assert predict_mode(argparse.Namespace(predict=None), "slow") == "always"


def test_typing_at_the_end_leaves_a_right_hand_prompt_alone():
    s = Session(LineEditor(prompt="$ \x1b[34C[rp]\r\x1b[2C"), flags=RAW)
    s.type(b"a")
    s.run_until(0.3)
    assert plain(s.type(b"b")) == b"b"  # predicted, though the row's end is not blank
    assert s.line().startswith("$ ab") and s.line().rstrip().endswith("[rp]")


def test_resize_erases_predictions_first():
    s = Session(LineEditor(), flags=RAW)
    s.type(b"a")
    s.run_until(0.3)
    s.type(b"bc")
    assert s.line().startswith("$ abc")
    s._show(s.predictor.resize(ROWS, COLS, s.now))
    assert s.local_dump() == s.reference_dump()  # as the host left it
    s.settle()
    assert s.local_dump() == s.reference_dump()


def test_private_sgr_does_not_cost_the_emulator():
    p = P.Predictor(ROWS, COLS, "always")
    p.host_output(b"\x1b[?1049h\x1b[>4;2m~", 0.0)
    p._feed()
    assert p.screen is not None and p.screen.alternate


def test_the_read_loops_glue():
    from skypty.client.interactive import LocalEcho
    from skypty.wire.rpc import RPCError

    echo = LocalEcho("always", ROWS, COLS)
    assert echo.read_method() == "pty.ReadFlagged"
    host, shown = echo.output(b"\x83$ ", 0.0)  # the modes byte is the host's, not the terminal's
    assert (host, shown) == (b"$ ", b"$ ") and echo.core.flags == 0x83
    echo.read_method()
    assert echo.read_refused(RPCError("rpc: can't find method pty.ReadFlagged"))
    assert echo.read_method() == "pty.Read" and echo.core.flags is None
    assert echo.output(b"\x83$ ", 0.0) == (b"\x83$ ", b"\x83$ ")  # a reference host's bytes, whole
    assert LocalEcho("auto", ROWS, COLS).read_method() == "pty.Read"  # not predicting: reads as ever

    echo.sent(7, b"a", 0.0)
    echo.replies({7: 1, 8: None}, 0.2)  # its pty.Write answered: an RTT sample, the key acknowledged
    assert echo.writes == {} and echo.core.srtt == pytest.approx(0.2)


FRAGMENTS = st.sampled_from([b"x", b"hello ", b"\r\n", b"\r", b"\b", b"\x1b[K", b"\x1b[2J\x1b[H", b"\x1b[31m",
                             b"\x1b[0m", b"\x1b[4h", b"\x1b[4l", b"\x1b[?1049h", b"\x1b[?1049l", b"\x1b(0",
                             b"\x1b(B", b"\x1b[5D", b"\x1b[3C", b"\x1b[A", b"\x1b[2;5H", b"\x1b[1P", b"\x1b[2@",
                             b"\t", b"\x07", b"\xe4\xb8\xad", b"\x1b[>4;2m", b"\x1b[?4m", b"\x1b]0;title\x07"])


class Noisy(LineEditor):
    """The line editor, with other output (a background job, a redraw) after some keys."""

    def __init__(self, noise):
        super().__init__()
        self.noise = list(noise)

    def key(self, data):
        out = super().key(data)
        return out + (self.noise.pop(0) if self.noise else b"")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(KEYS, st.floats(0.0, 0.4)), max_size=30),
       st.lists(st.one_of(FRAGMENTS, st.binary(max_size=8)), max_size=30), st.sampled_from([None, RAW]))
def test_hostile_output_never_breaks_the_screen(steps, noise, flags):
    s = Session(Noisy(noise), flags=flags)
    for key, pause in steps:
        s.type(key)
        s.run_until(s.now + pause)
    s.settle()
    assert s.local_dump() == s.reference_dump()


@pytest.mark.parametrize("noise", [b"\x1b[4h", b"\x01\xc2", b"\x1b]0;half a title", b"\x1b[3"],
                         ids=["insert mode", "half a UTF-8 character", "half an OSC", "half a CSI"])
def test_nothing_drawn_where_the_terminal_would_not_just_replace_a_cell(noise):
    """Found by the hostile-output test: predictions drawn in insert mode
    push text right, and bytes after an unfinished sequence join it."""
    s = Session(Noisy([noise]), flags=None)
    s.type(b"a")
    s.type(b"a")
    s.settle()
    assert s.local_dump() == s.reference_dump()


def test_unfinished():
    assert [P.unfinished(d) for d in (b"ab", b"a\x1b[", b"\x1b[31m", b"\x1b]0;t", b"\x1b]0;t\x07", b"\xe4\xb8",
                                      b"\xe4\xb8\xad", b"\x1b(", b"\x1b(B")] == \
        [b"", b"\x1b[", b"", b"\x1b]0;t", b"", b"\xe4\xb8", b"", b"\x1b(", b""]


ACTIONS = st.one_of(st.tuples(st.just("key"), KEYS),
                    st.tuples(st.just("output"), st.one_of(FRAGMENTS, st.binary(max_size=6))),
                    st.tuples(st.just("wait"), st.floats(0.0, 0.4)), st.tuples(st.just("resize"), st.just(b"")))


@settings(max_examples=300, deadline=None)
@given(st.lists(ACTIONS, max_size=40), st.sampled_from([None, RAW]), st.booleans())
def test_background_output_and_resizes_never_break_the_screen(actions, flags, echo):
    """Output the keys did not cause (a background job), at any moment."""
    s = Session(LineEditor(echo=echo), flags=flags)
    for what, arg in actions:
        if what == "key":
            s.type(arg)
        elif what == "output":
            s._output(arg)
        elif what == "resize":
            s._show(s.predictor.resize(ROWS, COLS, s.now))
        else:
            s.run_until(s.now + arg)
    s.settle()
    assert s.local_dump() == s.reference_dump()

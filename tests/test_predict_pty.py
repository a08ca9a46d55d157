"""Predictive local echo through real terminals (issue #24): the real client
in a pty (pexpect), a real host, a 200 ms RTT path (tests/delayrelay.py).

What the client writes to its terminal is recorded with arrival times and
replayed into pyte: the screen a user sees after typing must equal the
screen the same typing gives without prediction."""

import os
import shutil
import statistics
import sys
import threading
import time

import pexpect
import pytest

pyte = pytest.importorskip("pyte")

from tests.delayrelay import DelayRelay  # noqa: E402
from tests.hosts import CLIENT, Host, env, wait_for  # noqa: E402

RTT = 0.2
ROWS, COLS = 24, 80
PROMPT = "PP$ "


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("predict")).start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def slow(host):
    relay = DelayRelay(host.tcp_port, RTT)
    yield f"{host.pk}@127.0.0.1:{relay.port}"
    relay.close()


@pytest.fixture(scope="module")
def classic(tmp_path_factory):
    """A host that answers only the reference's methods (no pty.ReadFlagged),
    on the same slow path: -> (host, target)."""
    from tests.classic_host import ClassicHost

    h = ClassicHost(tmp_path_factory.mktemp("predict-classic")).start()
    relay = DelayRelay(h.tcp_port, RTT)
    yield h, f"{h.pk}@127.0.0.1:{relay.port}"
    relay.close()
    h.stop()


@pytest.fixture(params=["skypty host", "reference host"])
def any_host(request, host, slow, classic):
    """-> (host, target): a skypty host (it tells the tty's modes) or a
    reference one (prediction then relies on confirmation alone)."""
    return (host, slow) if request.param == "skypty host" else classic


class Terminal:
    """The client on a pty; every byte it writes, with the time it arrived."""

    def __init__(self, target, host, predict, command=(), options=()):
        argv = ["shell", "-t", target, "-i", host.config_path, "--predict", predict, *options]
        if command:
            argv += ["--", *command]
        self.child = pexpect.spawn(CLIENT[0], CLIENT[1:] + argv, env=env(), dimensions=(ROWS, COLS),
                                   timeout=20, echo=False)
        self.child.delaybeforesend = None  # pexpect sleeps 50 ms before each send by default
        self.chunks = []  # (monotonic time, bytes)
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        fd = self.child.child_fd
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                self.chunks.append((time.monotonic(), data))

    def output(self, since=0.0):
        with self.lock:
            return b"".join(d for t, d in self.chunks if t >= since)

    def wait_for(self, text, since=0.0, timeout=10.0):
        """-> the time *text* (bytes) was first complete in the output after *since*."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                seen = b""
                for t, d in self.chunks:
                    if t >= since:
                        seen += d
                        if text in seen:
                            return t
            time.sleep(0.002)  # polling the recorder with a deadline
        raise AssertionError(f"{text!r} never came; got {self.output(since)[-300:]!r}")

    def send(self, data):
        now = time.monotonic()
        self.child.send(data)
        return now

    def screen(self):
        from skypty.client.predict import _pyte

        screen = _pyte()[0](COLS, ROWS)  # pyte's Screen, minus its crash on vim's CSI > 4;2 m
        pyte.ByteStream(screen).feed(self.output())
        return screen.display, (screen.cursor.x, screen.cursor.y)

    def close(self):
        self.child.close(force=True)


def bash():
    return ["env", f"PS1={PROMPT}", "bash", "--norc", "--noprofile", "-i"]


def started(target, host, predict, command=None):
    term = Terminal(target, host, predict, command or bash())
    term.wait_for(PROMPT.encode())
    return term


def settle(term, quiet=0.8):
    """Wait until the terminal has been quiet for *quiet* seconds."""
    def still():
        with term.lock:
            last = term.chunks[-1][0] if term.chunks else 0
        return time.monotonic() - last > quiet
    wait_for(still, timeout=15, what="a quiet terminal")


def type_slowly(term, keys, gap=0.05):
    for key in keys:
        term.send(key)
        time.sleep(gap)  # a person's typing rhythm (the test's input, not a synchronisation)


EDIT = [b"e", b"c", b"h", b"o", b" ", b"h", b"e", b"l", b"o", b"\x1b[D", b"l", b"\x1b[C", b"!", b"\x7f",
        b" ", b"w", b"x", b"\x7f", b"o", b"r", b"l", b"d"]


def test_typed_characters_appear_at_once_and_the_screen_is_exact(any_host):
    host, slow = any_host
    term = started(slow, host, "always")
    try:
        t = term.send(b"e")  # the first key of a line is shown when the host confirms it
        term.wait_for(b"e", since=t)
        term.send(b"\x7f")
        settle(term, 0.5)
        delays = []
        for key in b"echo predicted":
            t = term.send(bytes((key,)))
            if key != ord(" "):  # a blank over a blank: only the cursor moves
                delays.append(term.wait_for(bytes((key,)), since=t) - t)
            time.sleep(0.03)  # a typing rhythm
        assert statistics.median(delays) < 0.05, delays  # the path's RTT is 200 ms
        type_slowly(term, EDIT[4:])  # editing keys, as the next test types them
        term.send(b"\r")
        term.wait_for(b"\rpredicted hello world\r\n")
        settle(term)
        predicted = term.screen()
    finally:
        term.close()
    plain = started(slow, host, "never")
    try:
        type_slowly(plain, [b"e", b"\x7f"] + [bytes((k,)) for k in b"echo predicted"] + EDIT[4:])
        plain.send(b"\r")
        plain.wait_for(b"\rpredicted hello world\r\n")
        settle(plain)
        assert plain.screen() == predicted
    finally:
        plain.close()


def test_nothing_typed_at_read_s_reaches_the_terminal(any_host):
    host, slow = any_host
    term = started(slow, host, "always")
    try:
        type_slowly(term, [bytes((k,)) for k in b"echo ready"])
        term.send(b"\r")
        term.wait_for(b"\rready\r\n")
        type_slowly(term, [bytes((k,)) for k in b"read -s -p pw: V; echo got ${#V}"])
        t = term.send(b"\r")
        term.wait_for(b"pw:", since=t)
        secret = b"QZXJQZXJ"
        t = term.send(secret[:4])  # a burst, as a typist types a password
        type_slowly(term, [bytes((k,)) for k in secret[4:]], gap=0.02)
        term.send(b"\r")
        term.wait_for(b"got 8", since=t)
        settle(term, 0.5)
        after = term.output(since=t)
        assert not any(c in after for c in b"QZXJ"), after
    finally:
        term.close()


SWALLOW = ("import os, sys, tty\n"
           "tty.setraw(0)\n"
           "os.write(1, b'RAW> ')\n"
           "while True:\n"
           "    k = os.read(0, 1)\n"
           "    if k == b'q': break\n"
           "    if k != b'z': os.write(1, k)\n")


def test_a_misprediction_is_repaired_within_one_rtt(host, slow):
    """A raw-mode program that swallows 'z' (as vi's normal mode swallows
    keys): the predicted z is erased about one RTT after it was typed."""
    term = Terminal(slow, host, "always", [sys.executable, "-c", SWALLOW])
    try:
        term.wait_for(b"RAW> ")
        type_slowly(term, [b"a", b"b", b"c"], gap=0.3)
        settle(term, 0.4)
        t = term.send(b"z")
        shown = term.wait_for(b"z", since=t)
        assert shown - t < 0.05  # predicted
        repaired = term.wait_for(b"\x1b[1D", since=shown)  # the cell repainted, the cursor put back
        assert repaired - t < 2 * RTT, repaired - t
        settle(term, 0.5)
        display, cursor = term.screen()
        assert "RAW> abc" in "".join(display) and "z" not in "".join(display)
        assert cursor[0] == len("RAW> abc")
    finally:
        term.close()


def test_never_and_loopback_auto_write_exactly_the_hosts_bytes(host):
    """Without prediction (auto on loopback) the terminal gets the host's bytes
    unchanged: no cursor movement of ours, nothing underlined."""
    term = started(host.target, host, "auto")
    try:
        type_slowly(term, [bytes((k,)) for k in b"echo fast"], gap=0.02)
        term.send(b"\r")
        term.wait_for(b"\rfast\r\n")
        out = term.output()
        assert b"\x1b[4m" not in out and b"\x1b[1C" not in out
    finally:
        term.close()


def test_read_flagged_tells_the_ptys_echo_mode(host):
    """pty.ReadFlagged: pty.Read with one byte of the pty's modes first,
    taken when the output is handed over (so with the prompt it precedes)."""
    from skypty.client.rpc import BlockingRPC, request_service
    from skypty.client.transport import connect_noise
    from skypty.host.shell import TTY_ECHO, TTY_ICANON, TTY_KNOWN
    from skypty.keys import PublicKey, SecretKey
    from skypty.wire import types as T

    channel = connect_noise("127.0.0.1", host.tcp_port, PublicKey.from_hex(host.pk),
                            SecretKey.from_hex(host.data["sk"]))
    rpc = BlockingRPC(channel, request_service(channel, "dmsgpty/pty"))
    try:
        rpc.call("pty.Start", T.CommandReq.cls(name="sh", arg=[], env=["TERM=xterm"]), T.CommandReq, T.EMPTY)
        # The shell waits in `read y` (echo on) until the first reply is in:
        # the mode is taken when a reply is handed over, and a busy machine
        # could otherwise run the stty before our first read arrives.
        rpc.call("pty.Write", b"read y; stty -echo; printf 'A''B'; read x\n", T.BYTES, T.INT)
        first = rpc.call("pty.ReadFlagged", 4096, T.INT, T.BYTES)
        assert first[0] == TTY_KNOWN | TTY_ECHO | TTY_ICANON  # sh reads its line with echo on
        rpc.call("pty.Write", b"\n", T.BYTES, T.INT)
        modes, seen = [], b""
        deadline = time.monotonic() + 10
        while b"AB" not in seen and time.monotonic() < deadline:
            reply = rpc.call("pty.ReadFlagged", 4096, T.INT, T.BYTES)
            modes.append(reply[0])
            seen += reply[1:]
        assert b"AB" in seen, seen
        assert modes[-1] == TTY_KNOWN | TTY_ICANON  # with the output after stty -echo: echo off
    finally:
        channel.close()


@pytest.fixture(scope="module")
def persistent(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("predict-persist"), persistent=True).start()
    relay = DelayRelay(h.tcp_port, RTT)
    h.relay = relay
    yield h, f"{h.pk}@127.0.0.1:{relay.port}"
    relay.close()
    h.stop()


def test_a_dropped_link_leaves_no_prediction_behind(persistent):
    """The link drops while predictions are on the screen: they are erased
    before the client's notice, and after the reattach typing goes on."""
    host, target = persistent
    term = started(target, host, "always")
    try:
        type_slowly(term, [b"e", b"c"], gap=0.3)  # confirmed: the next keys are drawn at once
        t = term.send(b"h")
        term.wait_for(b"h", since=t)
        host.relay.cut()  # before the host's echo of "h" is back
        term.wait_for(b"reattached session", since=t, timeout=20)
        settle(term, 0.6)
        type_slowly(term, [b"\x15"] + [bytes((k,)) for k in b"echo ok"])  # ^U: whatever the host has
        t = term.send(b"\r")
        term.wait_for(b"\rok\r\n", since=t)
        settle(term, 0.5)
        from skypty.client.predict import _pyte

        screen = _pyte()[0](COLS, ROWS)
        pyte.ByteStream(screen).feed(term.output())
        assert not any(screen.buffer[y][x].underscore for y in range(ROWS) for x in range(COLS))
        notice = term.output().index(b"[skypty: connection lost")
        before = term.output()[:notice]
        # the predicted h, then (the link gone) its cell repainted and the cursor back, then the notice
        assert before.endswith(b"\x1b[4mh\x1b[24m\x1b[1D \x1b[1D\r\n"), before[-80:]
    finally:
        term.close()


def test_escape_and_reattach_with_prediction(persistent):
    import re

    host, target = persistent
    term = started(target, host, "always")
    try:
        type_slowly(term, [bytes((k,)) for k in b"echo one"])
        t = term.send(b"\r")
        term.wait_for(b"\rone\r\n", since=t)
        type_slowly(term, [bytes((k,)) for k in b"echo tw"])  # predicted, then left on the line
        t = term.send(b"\x15\r~.")  # ^U the line, a new one, and disconnect
        term.wait_for(b"the session lives on", since=t)
        term.child.expect(pexpect.EOF, timeout=10)
        term.child.close()
        assert term.child.exitstatus == 255
        sid = re.search(rb"--attach ([0-9a-f]+)", term.output()).group(1).decode()
    finally:
        term.close()
    again = Terminal(target, host, "always", options=["--attach", sid])
    try:
        again.wait_for(b"reattached session")
        again.wait_for(b"\rone\r\n")  # the replay
        settle(again, 0.5)
        type_slowly(again, [bytes((k,)) for k in b"echo two"])
        t = again.send(b"\r")
        again.wait_for(b"\rtwo\r\n", since=t)
    finally:
        again.close()


@pytest.mark.skipif(not shutil.which("vim"), reason="no vim")
def test_vi_gets_no_predictions_and_its_screen_is_exact(host, slow):
    """Full-screen programs (the alternate screen) are never predicted: vi's
    normal mode would swallow the keys a prediction shows."""
    screens = {}
    for predict in ("always", "never"):
        term = Terminal(slow, host, predict, ["env", "TERM=xterm", "vim", "-u", "NONE", "-N", "-n",
                                              "/tmp/skypty-predict-vi-unsaved"])
        try:
            term.wait_for(b"\x1b[?1049h")
            settle(term, 0.5)
            t = term.send(b"x")  # normal mode: deletes nothing (an empty buffer), shows nothing
            # insert mode, each key echoed before the next: predictions elsewhere would be
            # confirmed here and shown from then on
            type_slowly(term, [b"i", b"h", b"e", b"y"], gap=0.4)
            type_slowly(term, [b"y", b"o", b"u", b"\x1b", b"d", b"d", b"i", b"o", b"k"])
            settle(term, 0.8)
            if predict == "always":
                assert b"\x1b[4m" not in term.output(since=t)  # nothing of ours was drawn
            screens[predict] = term.screen()
        finally:
            term.close()
    assert screens["always"] == screens["never"]


def test_after_stty_minus_echo_nothing_typed_is_shown(any_host):
    """bash after `stty -echo`: readline stops echoing (the tty's modes look
    as always to the client); the keys after Enter are tentative and never
    confirmed, so none of them is drawn."""
    host, slow = any_host
    term = started(slow, host, "always")
    try:
        type_slowly(term, [bytes((k,)) for k in b"stty -echo"])
        t = term.send(b"\r")
        term.wait_for(PROMPT.encode(), since=t)
        t = time.monotonic()
        type_slowly(term, [bytes((k,)) for k in b"true QZXJ"], gap=0.03)
        term.send(b"\r")
        settle(term, 0.6)
        after = term.output(since=t)
        assert not any(c in after for c in b"QZXJ"), after
    finally:
        term.close()

"""Interactive sessions on a slow or unreliable path (issue #23), over a
delaying relay on loopback (tests/linkrelay.py): 100 ms each way, a path
that goes silent, a client whose old path is gone for good.  The client's
contact timers are shortened through SKYPTY_CONTACT_TIMERS."""

import os
import re
import subprocess
import threading
import time

import pexpect
import pytest

from tests.linkrelay import LinkRelay
from tests.hosts import CLIENT, Host, env, wait_for

ONE_WAY = 0.1  # 200 ms round trips
SHORT_TIMERS = "0.25,1.0,1.0"  # ping after 0.25 s quiet, say "no contact" / reattach after 1 s


def client_env(timers=None):
    e = env()
    if timers:
        e["SKYPTY_CONTACT_TIMERS"] = timers
    return e


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("slow")).start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def phost(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("slow-persist"), persistent=True).start()
    yield h
    h.stop()


@pytest.fixture
def relay_to(request):
    relays = []

    def make(h, **kw):
        r = LinkRelay(("127.0.0.1", h.tcp_port), delay=ONE_WAY, **kw)
        relays.append(r)
        return r

    yield make
    for r in relays:
        r.shutdown()


def target(h, relay):
    return f"{h.pk}@127.0.0.1:{relay.port}"


def spawn_shell(h, relay, *command, timers=None):
    argv = CLIENT[1:] + ["shell", "-t", target(h, relay), "-i", h.config_path, "--"] + list(command)
    return pexpect.spawn(CLIENT[0], argv, env=client_env(timers), dimensions=(24, 80), timeout=30)


class Drain:
    """Reads a pexpect child's terminal all the time (a flood must not block
    on a full pty) and remembers where each pattern was first seen."""

    def __init__(self, child):
        self.child, self.data, self.done = child, bytearray(), False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done:
            try:
                self.data += self.child.read_nonblocking(65536, timeout=0.1)
            except pexpect.TIMEOUT:
                continue
            except (pexpect.EOF, OSError):
                return

    def seen_after(self, mark, pattern):
        return pattern in self.data[mark:]

    def stop(self):
        self.done = True
        self.thread.join()


def test_bulk_output_keeps_several_reads_in_flight(host, relay_to, tmp_path):
    """`cat` of 2 MB at 200 ms RTT, until the prompt returns: one 64 KiB read
    per round trip took ~6.5 s; ssh -tt takes ~1.5 s."""
    relay = relay_to(host)
    big = tmp_path / "big.txt"
    big.write_bytes(b"".join(b"%07d the quick brown fox jumps over the lazy dog\n" % i for i in range(40000)))
    child = spawn_shell(host, relay, "sh")
    try:
        child.sendline("PS1='PRO''MPT> '")
        child.expect("PROMPT> ")
        drain = Drain(child)
        child.sendline(f"cat {big}; echo EN''D-OF-CAT")
        started = time.monotonic()
        wait_for(lambda: drain.seen_after(0, b"END-OF-CAT\r\nPROMPT> "), timeout=60, what="the end of the cat")
        elapsed = time.monotonic() - started
        drain.stop()
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    got = bytes(drain.data).replace(b"\r\n", b"\n")
    assert big.read_bytes() in got
    print(f"bulk: 2 MB in {elapsed:.2f} s")
    assert elapsed < 3.0, f"2 MB took {elapsed:.2f} s at 200 ms RTT"


def test_ctrl_c_during_a_flood_returns_to_the_prompt_quickly(host, relay_to, tmp_path):
    """A 2 MB/s bottleneck behind 200 ms: what the host holds and what is in
    flight must be small, or ^C waits for it all to drain."""
    relay = relay_to(host, rate=2_000_000)
    f = tmp_path / "flood.txt"
    f.write_bytes(b"flood flood flood flood flood flood flood flood flood flood\n" * 20000)
    child = spawn_shell(host, relay, "sh")
    try:
        child.sendline("PS1='PRO''MPT> '")
        child.expect("PROMPT> ")
        child.sendline(f"while :; do cat {f}; done")
        drain = Drain(child)
        wait_for(lambda: relay.bytes_down > 3_000_000, timeout=30, what="the flood")
        mark = len(drain.data)
        child.send("\x03")
        sent = time.monotonic()
        wait_for(lambda: drain.seen_after(mark, b"PROMPT> "), timeout=30, what="the prompt")
        elapsed = time.monotonic() - sent
        drain.stop()
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    print(f"ctrl-c: prompt after {elapsed:.2f} s")
    assert elapsed < 1.0, f"the prompt came back {elapsed:.2f} s after ^C"


def test_a_silent_path_is_reported_and_a_plain_shell_survives_it(host, relay_to):
    relay = relay_to(host)
    child = spawn_shell(host, relay, "sh", timers=SHORT_TIMERS)
    try:
        child.sendline("echo ready-$((6*7))")
        child.expect("ready-42")
        relay.stall()
        silenced = time.monotonic()
        child.expect(r"\[skypty: no contact with .* for \d+ s\]")
        noticed = time.monotonic() - silenced
        print(f"dead link: noticed after {noticed:.2f} s (notice timer 1 s)")
        assert noticed < 5
        time.sleep(1.5)  # the outage itself (the thing under test), not a wait for a race
        relay.resume()
        child.expect(r"\[skypty: back in contact with .* after \d+ s\]")
        child.sendline("echo alive-$((6*7))")
        child.expect("alive-42")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def _numbered_output(phost, relay, tmp_path, count, timers):
    script = f"i=0; while [ $i -lt {count} ]; do i=$((i+1)); echo n-$i; sleep 0.02; done"
    out_path = tmp_path / "out"
    out = open(out_path, "wb")
    proc = subprocess.Popen(CLIENT + ["shell", "-t", target(phost, relay), "-i", phost.config_path, "--",
                                      "sh", "-c", script], stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.PIPE, env=client_env(timers))
    out.close()
    return proc, out_path


def _lines(path):
    return re.findall(rb"n-(\d+)\r\n", path.read_bytes())


def _resumes_after(out_path, since, what):
    before = len(_lines(out_path))
    wait_for(lambda: len(_lines(out_path)) > before + 3, timeout=30, what=what)
    return time.monotonic() - since


def _every_line_once(out_path, count):
    assert [int(n) for n in _lines(out_path)] == list(range(1, count + 1))


def test_a_persistent_session_resumes_soon_after_an_outage(phost, relay_to, tmp_path):
    relay = relay_to(phost)
    count = 400
    proc, out_path = _numbered_output(phost, relay, tmp_path, count, SHORT_TIMERS)
    try:
        wait_for(lambda: len(_lines(out_path)) > 20, what="the first lines")
        relay.stall()
        time.sleep(4)  # the outage under test: longer than the dead-path timer
        relay.resume()
        resumed = _resumes_after(out_path, time.monotonic(), "output after the outage")
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    print(f"outage: output resumed {resumed:.2f} s after the link came back")
    assert resumed < 3.0, f"output resumed {resumed:.2f} s after the link came back"
    _every_line_once(out_path, count)
    assert b"reattached session" in err


def test_a_roaming_client_reattaches_on_a_new_path(phost, relay_to, tmp_path):
    relay = relay_to(phost)
    count = 300
    proc, out_path = _numbered_output(phost, relay, tmp_path, count, SHORT_TIMERS)
    try:
        wait_for(lambda: len(_lines(out_path)) > 20, what="the first lines")
        relay.strand()  # the client's old path is gone for good; new connections work
        resumed = _resumes_after(out_path, time.monotonic(), "output on a new path")
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    print(f"roaming: output resumed {resumed:.2f} s after the address changed")
    assert resumed < 10.0, f"output resumed {resumed:.2f} s after the address changed"
    _every_line_once(out_path, count)
    assert relay.connections >= 2 and b"no contact with" in err


def _keepalive_seconds(port):
    """The host side's keepalive timer on its connection(s) from local port *port* (ss -o)."""
    out = subprocess.run(["ss", "-tno", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    return [float(v) for v in re.findall(r"timer:\(keepalive,(\d+(?:\.\d+)?)sec", out)]


def test_the_host_keeps_a_plain_shells_connection_through_minutes_of_silence(host):
    """The kernel would end the connection (and the shell with it) after
    ~50 s of silence with the short timers; a shell's connection gets 220 s."""
    from skypty.wire.netopts import SHELL_KEEPALIVE

    child = pexpect.spawn(CLIENT[0], CLIENT[1:] + ["shell", "-t", host.target, "-i", host.config_path, "--", "sh"],
                          env=client_env(), dimensions=(24, 80), timeout=30)
    try:
        child.sendline("echo ready-$((6*7))")
        child.expect("ready-42")
        wait_for(lambda: _keepalive_seconds(host.tcp_port), what="the host's side of the connection")
        assert max(_keepalive_seconds(host.tcp_port)) > 30
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    idle, interval, count = SHELL_KEEPALIVE
    assert idle + interval * count > 180


def test_shell_keepalive_bounds_unacknowledged_data_past_three_minutes():
    import socket

    from skypty.wire.netopts import SHELL_KEEPALIVE, enable_keepalive

    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as sock:
        assert enable_keepalive(sock, timers=SHELL_KEEPALIVE)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) > 180_000
        assert enable_keepalive(sock)  # everything else keeps the short timers
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) <= 60_000


def test_a_manual_attach_shows_the_screen_not_the_whole_buffer(phost, tmp_path):
    """A new client attaching by id gets the session from its last screen
    clear (here) or a short tail, with a line saying what was replayed."""
    script = ("i=0; while [ $i -lt 4000 ]; do i=$((i+1)); echo old-output-$i; done; "
              "printf '\\033[H\\033[2J'; echo after-the-clear; sleep 60")
    out_path = tmp_path / "first"
    with open(out_path, "wb") as out:
        first = subprocess.Popen(CLIENT + ["start", "-t", "--cliaddr", phost.cli, "--", "sh", "-c", script],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, env=env())
    try:
        line = first.stderr.readline().decode()
        sid = line.split("session ")[1].split(";")[0]
        wait_for(lambda: b"after-the-clear" in out_path.read_bytes(), what="the session's output")
        child = pexpect.spawn(CLIENT[0], CLIENT[1:] + ["start", "--attach", sid, "--cliaddr", phost.cli],
                              env=env(), dimensions=(24, 80), timeout=30)
        child.expect(r"\[skypty: reattached session \w+ \((\d+) bytes replayed: its current screen; "
                     r"(\d+) earlier bytes skipped\)\]")
        replayed, skipped = int(child.match.group(1)), int(child.match.group(2))
        child.expect("after-the-clear")
        assert b"old-output" not in child.before
        child.sendcontrol("c")
        child.expect(pexpect.EOF)
        child.close()
    finally:
        first.kill()
        first.wait()
    assert replayed < 100 and skipped > 50_000


def test_interactive_connections_cap_tcps_retransmission_backoff():
    import socket

    from skypty.wire.netopts import TCP_RTO_MAX_MS, quick_retransmits

    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as sock:
        took = quick_retransmits(sock)
        assert took in ("TCP_RTO_MAX_MS", "TCP_THIN_LINEAR_TIMEOUTS")
        if took == "TCP_RTO_MAX_MS":
            assert sock.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS) <= 1000
        # Linux turns its retry count into time with the backoff cap: without an
        # explicit give-up time a capped socket would die ~15 s into an outage.
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) >= 10 * 60 * 1000


@pytest.mark.parametrize("which", ["host", "phost"])
def test_a_terminal_that_stops_reading_is_not_a_dead_link(which, request, tmp_path):
    """The client blocked writing to a paused terminal hears nothing for a
    while: the host is still there (its data waits in the socket).  (A
    persistent session's ring overflows meanwhile, as it should.)"""
    h = request.getfixturevalue(which)
    script = "head -c 3000000 /dev/zero | tr '\\0' y; echo; echo the-end"
    proc = subprocess.Popen(CLIENT + ["start", "-t", "--cliaddr", h.cli, "--", "sh", "-c", script],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=client_env(SHORT_TIMERS))
    try:
        first = os.read(proc.stdout.fileno(), 1024)  # then nobody reads the pipe: the client blocks writing
        wait_for(lambda: _client_blocked_writing(proc.pid), what="the client to block on its terminal")
        time.sleep(2.5)  # paused longer than the 1 s dead-path timer: the thing under test
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert rest.endswith(b"the-end\r\n")
    if which == "host":
        assert (first + rest).count(b"y") == 3_000_000
    assert b"reattaching" not in err and b"no contact" not in err


def _client_blocked_writing(pid):
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return "pipe_write" in f.read() or "wait_woken" in f.read()
    except OSError:
        return False

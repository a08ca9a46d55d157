"""Operating a host: the manhole (and its client), and the log lines for accepted and refused peers."""

import io
import os
import re

import pytest

from tests.hosts import Host, wait_for


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("ops"), persistent=True)
    h.manhole = os.path.join(h.dir, "manhole.sock")
    h.data["pty"]["manhole"] = "unix:" + h.manhole
    h.write_config()
    h.start()
    yield h
    h.stop()


def manhole(*args, **kw):
    import pexpect

    from tests.hosts import CLIENT, env
    return pexpect.spawn(CLIENT[0], CLIENT[1:] + ["manhole", *args], env=env(), timeout=20, **kw)


def test_manhole_client_evaluates_against_the_live_host(host):
    import pexpect

    from tests.hosts import CLIENT, env
    assert os.stat(host.manhole).st_mode & 0o777 == 0o600
    session = pexpect.spawn(CLIENT[0], CLIENT[1:] + ["start", "--cliaddr", host.cli, "-i", host.config_path,
                                                     "--", "sleep", "30"], env=env(), timeout=20)
    try:
        wait_for(lambda: re.search(r"session \w+ started .*sleep 30", host.log()), what="the session")
        seen = io.BytesIO()
        child = manhole(host.manhole)
        child.logfile_read = seen
        child.expect_exact(">>> ")
        child.sendline("6 * 7")
        child.expect_exact("42")
        child.sendline("config.pk.hex()")
        child.expect_exact(host.pk)
        child.sendline("print('ids=%s' % ','.join(s['command'] for s in sessions.list()))")
        child.expect(r"ids=[^\r\n]*sleep 30")
        child.send("\x04")  # Ctrl-D on an empty line: the manhole hangs up
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        # the user's terminal is never reset or cleared; insert mode is undone at the end
        assert b"\x1bc" not in seen.getvalue() and b"\x1b[2J" not in seen.getvalue()
        assert seen.getvalue().rstrip(b"\r\n").endswith(b"\x1b[4l")
    finally:
        session.terminate(force=True)


def test_manhole_client_takes_the_path_from_the_config_and_piped_input(host):
    import subprocess

    from tests.hosts import CLIENT, env
    r = subprocess.run(CLIENT + ["manhole", "-i", host.config_path], input=b"print('sum=%d' % (40 + 2))\n",
                       capture_output=True, env=env(), timeout=30)
    assert r.returncode == 0 and b"sum=42" in r.stdout, r
    assert b"\xff" not in r.stdout  # no telnet commands on the screen
    r = subprocess.run(CLIENT + ["manhole", os.path.join(host.dir, "nothing.sock")], capture_output=True,
                       env=env(), timeout=30)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and b"cannot open the manhole" in r.stderr


def test_piped_manhole_is_a_plain_line_prompt(host):
    """Piped in and out: no escape codes, each result on a line of its own."""
    import subprocess

    from tests.hosts import CLIENT, env
    script = b"1 + 1\n2 + 2\nfor i in range(2):\n  i\n\nprint('a')\n"
    r = subprocess.run(CLIENT + ["manhole", host.manhole], input=script, capture_output=True, env=env(),
                       timeout=30)
    assert r.returncode == 0, r
    assert b"\x1b" not in r.stdout and b"\r" not in r.stdout
    assert r.stdout.splitlines() == [b">>> 1 + 1", b"2", b">>> 2 + 2", b"4", b">>> for i in range(2):",
                                     b"...   i", b"... ", b"0", b"1", b">>> print('a')", b"a", b">>> "]


def test_screen_filter_keeps_the_users_terminal():
    from skypty.client.manhole import ScreenFilter

    stream = b"\x1bc>>> \x1b[4h1+1\r\r\r\n2\r\r\r\n>>> x\x08\x1b[K\x07y\r\n\x1b]0;title\x07\x1bc"
    # a terminal: everything but the full reset, split anywhere
    screen = ScreenFilter(plain=False)
    out = b"".join(screen.feed(stream[i:i + 1]) for i in range(len(stream))) + screen.end()
    assert out == stream.replace(b"\x1bc", b"")
    # plain: text and line ends only, ending on a line end
    plain = ScreenFilter(plain=True)
    out = b"".join(plain.feed(stream[i:i + 2]) for i in range(0, len(stream), 2)) + plain.end()
    assert out == b">>> 1+1\n2\n>>> xy\n"
    assert ScreenFilter(plain=True).end() == b""


def test_telnet_core_answers_options_and_keeps_commands_off_the_screen():
    from skypty.client.manhole import DO, IAC, NAWS, SB, SE, WILL, WONT, TelnetClient

    core = TelnetClient(size=(255, 24))
    screen, reply = core.receive(bytes([IAC, DO, 34, IAC, DO, NAWS, IAC, WILL, 1]) + b">>> ")
    assert screen == b">>> "
    # line mode refused, window size offered (255 doubled: it is IAC), echo accepted
    assert reply == bytes([IAC, WONT, 34, IAC, WILL, NAWS, IAC, SB, NAWS, 0, 255, 255, 0, 24, IAC, SE,
                           IAC, 253, 1])
    assert core.receive(bytes([IAC, DO, NAWS]))[1] == b""  # asked twice: answered once
    # split anywhere, a subnegotiation is skipped and IAC IAC is one 0xFF byte
    data = b"a" + bytes([IAC, SB, 24, 1, 2, IAC, SE]) + b"b" + bytes([IAC, IAC]) + b"c"
    out = b"".join(core.receive(data[i:i + 1])[0] for i in range(len(data)))
    assert out == b"ab\xffc"
    assert TelnetClient.escape(b"x\xffy") == b"x\xff\xffy"
    assert core.resize(80, 30) == bytes([IAC, SB, NAWS, 0, 80, 0, 30, IAC, SE])


def test_stale_manhole_lock_with_a_reused_pid_does_not_block_a_restart(tmp_path):
    """kill -9 leaves manhole.sock.lock naming the dead host's PID; once another
    process has that PID, Twisted's lock alone would refuse every restart."""
    import signal
    import subprocess
    import sys

    from tests.hosts import env

    h = Host(tmp_path, "stale")
    h.manhole = os.path.join(h.dir, "manhole.sock")
    h.data["pty"]["manhole"] = "unix:" + h.manhole
    h.write_config()
    h.start()
    lock = h.manhole + ".lock"
    assert os.readlink(lock) == str(h.proc.pid)
    h.proc.send_signal(signal.SIGKILL)
    h.proc.wait()
    squatter = subprocess.Popen(["sleep", "60"])  # a live process that is not a skypty host
    try:
        os.unlink(lock)
        os.symlink(str(squatter.pid), lock)
        h.start()
        assert os.readlink(lock) == str(h.proc.pid)

        # a lock held by a live skypty host is refused, in one line
        other = Host(tmp_path, "other")
        other.data["pty"]["manhole"] = "unix:" + h.manhole
        other.write_config()
        r = subprocess.run([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
                            "--pidfile=", "--logfile", other.log_path, "skypty", "--config", other.config_path],
                           capture_output=True, env=env(), timeout=60, cwd=other.dir)
        lines = r.stderr.decode().splitlines()
        assert r.returncode == 1 and len(lines) == 1, lines
        assert f"pty.manhole {h.manhole}: locked by a running skypty host, pid {h.proc.pid}" in lines[0]
    finally:
        squatter.kill()
        squatter.wait()
        h.stop()


def test_log_lines_for_accepted_and_refused_peers_carry_pk_and_entry_point(host):
    from skypty.keys import generate_keypair

    stranger_pk, stranger_sk = generate_keypair()
    host.client("shell", host.target, "--sk", stranger_sk.hex(), "--", "true")
    host.client("shell", host.target, "-i", host.config_path, "--", "true")
    wait_for(lambda: f"refused {stranger_pk.hex()} on tcp" in host.log(), what="the refusal to be logged")
    wait_for(lambda: f"accepted {host.pk} on tcp" in host.log(), what="the acceptance to be logged")

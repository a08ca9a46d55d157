"""Issue #25: a hostile local user, and what a revoked client is told.

Squatting: in a directory anyone may write (/tmp), another user binds the
control socket's path first; root's client then sent its commands to that
user, and the host could not say who held the path.

Revocation: whitelist-remove ends a live session; the client must say why
and exit 1 (it printed "CancelledError", or nothing and exit 0 with -T).
"""

import os
import shutil
import signal
import subprocess
import tempfile

import pytest

from skypty.keys import generate_keypair
from tests.hosts import CLIENT, Host, env, wait_for


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("hostile-local"), persistent=True).start()
    yield h
    h.stop()


def test_the_client_and_the_host_agree_on_the_revocation_text():
    from skypty.client.errors import REVOKED as told
    from skypty.host.auth import REVOKED as sent

    assert told == sent


@pytest.mark.parametrize("mode", [[], ["-T"], ["-t"]], ids=["one-shot", "no-tty", "tty"])
def test_a_revoked_session_says_why_and_exits_1(host, mode):
    # Regression (#25 exit codes): a one-shot printed "skypty-client:
    # CancelledError"; a -T stream ended quietly with exit 0.
    pk, sk = generate_keypair()
    assert host.client("whitelist-add", pk.hex(), "--cliaddr", host.cli).returncode == 0
    baseline = len(host.children())
    client = subprocess.Popen(CLIENT + ["shell", "--sk", sk.hex(), *mode, host.target, "--", "sleep", "30"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    try:
        wait_for(lambda: len(host.children()) > baseline, what="the remote sleep to start")
        assert host.client("whitelist-remove", pk.hex(), "--cliaddr", host.cli).returncode == 0
        _out, err = client.communicate(timeout=20)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 1, err
    assert b"the host revoked this key's access (whitelist-remove)" in err
    assert b"CancelledError" not in err


# -- control-socket squatting -------------------------------------------------------------

NOBODY = 65534


def run_as(uid, work):
    """Fork; the child drops to *uid* (group too), runs *work(report)* and
    exits.  *report(text)* writes a line the parent reads.  -> (pid, lines)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            work(lambda text: os.write(write_end, text.encode() + b"\n"))
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    return pid, os.fdopen(read_end, "r")


def squat(path):
    """Another user's process: bind *path* (None: a loopback TCP port, reported
    as "ready PORT"), then report how many bytes each caller sent before it
    hung up (the fixed client sends none)."""
    def work(report):
        import socket

        s = socket.socket(socket.AF_UNIX if path else socket.AF_INET)
        s.bind(path or ("127.0.0.1", 0))
        s.listen(8)
        report("ready" if path else f"ready {s.getsockname()[1]}")
        while True:
            conn, _ = s.accept()
            conn.settimeout(5)
            got = b""
            try:
                while len(got) < 65536:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            except OSError:
                pass
            conn.close()
            report(str(len(got)))

    return run_as(NOBODY, work)


@pytest.fixture
def shared_dir():
    """A directory like /tmp: anyone may create entries (sticky, mode 1777)."""
    path = tempfile.mkdtemp(prefix="skypty-shared-", dir="/tmp")
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def squatter(shared_dir):
    if os.geteuid() != 0:
        pytest.skip("needs root to run a process as another user")
    path = os.path.join(shared_dir, "pty.sock")
    pid, lines = squat(path)
    assert lines.readline() == "ready\n"
    assert os.stat(path).st_uid == NOBODY
    yield path, pid, lines
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    lines.close()


def test_the_client_refuses_a_control_socket_held_by_another_user(squatter, tmp_path):
    # Regression (#25.10): root's client sent its request line, and then the
    # command (sh -c '... sudo -S ...'), to whoever had bound the path first.
    path, pid, lines = squatter
    r = subprocess.run(CLIENT + ["exec", "02" + "ab" * 32, "--cliaddr", path, "--",
                                 "sh", "-c", "echo pw | sudo -S true"],
                       capture_output=True, text=True, timeout=30, env=env(), cwd=str(tmp_path))
    assert r.returncode == 1, r.stderr
    assert f"refusing the control socket {path}: it is held by uid {NOBODY} (nobody), pid {pid}" in r.stderr
    assert lines.readline() == "0\n"  # not one byte reached it


def test_cp_refuses_a_control_socket_held_by_another_user(squatter, tmp_path):
    # cp and fs mount reach the control socket through Twisted, not connect_unix.
    path, pid, lines = squatter
    r = subprocess.run(CLIENT + ["cp", "--cliaddr", path, "02" + "ab" * 32 + ":/etc/hostname", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=30, env=env(), cwd=str(tmp_path))
    assert r.returncode == 1, r.stderr
    assert f"refusing the control socket {path}: it is held by uid {NOBODY} (nobody), pid {pid}" in r.stderr
    assert lines.readline() == "0\n"


def test_the_manhole_client_refuses_a_socket_held_by_another_user(squatter, tmp_path):
    path, pid, lines = squatter
    r = subprocess.run(CLIENT + ["manhole", path], input="1+1\n", capture_output=True, text=True, timeout=30,
                       env=env(), cwd=str(tmp_path))
    assert r.returncode == 1, r.stderr
    assert f"refusing the manhole {path}: it is held by uid {NOBODY} (nobody), pid {pid}" in r.stderr
    assert lines.readline() == "0\n"


def test_the_client_refuses_a_tcp_control_port_held_by_another_user(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to run a process as another user")
    pid, lines = squat(None)
    try:
        port = int(lines.readline().split()[1])
        r = subprocess.run(CLIENT + ["exec", "02" + "ab" * 32, "--clinet", "tcp", "--cliaddr", f"127.0.0.1:{port}",
                                     "--", "true"], capture_output=True, text=True, timeout=30, env=env(),
                           cwd=str(tmp_path))
        assert r.returncode == 1, r.stderr
        assert (f"refusing the control socket tcp 127.0.0.1:{port}: it is held by uid {NOBODY} (nobody)"
                in r.stderr), r.stderr
        assert lines.readline() == "0\n"  # not one byte reached it
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        lines.close()


def test_the_client_accepts_its_own_users_socket(tmp_path):
    import socket

    from skypty.client.transport import connect_unix

    from skypty.client.transport import connect_control

    path = str(tmp_path / "own.sock")
    with socket.socket(socket.AF_UNIX) as own:
        own.bind(path)
        own.listen()
        connect_unix(path).close()
    with socket.socket() as own:
        own.bind(("127.0.0.1", 0))
        own.listen()
        connect_control("tcp", f"127.0.0.1:{own.getsockname()[1]}").close()


def test_the_host_names_the_user_holding_its_control_socket(squatter, tmp_path):
    path, pid, _lines = squatter
    host = Host(tmp_path, "a")
    host.data["pty"]["cli_address"] = host.cli = path
    host.write_config()
    code, said = host.run_expecting_failure()
    assert code == 1
    assert (f"pty.cli_address {path}: held by another user, uid {NOBODY} (nobody), pid {pid}"
            in said), said


def test_the_host_names_the_user_holding_its_tcp_port(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to run a process as another user")
    pid, lines = squat(None)
    try:
        port = int(lines.readline().split()[1])
        host = Host(tmp_path, "a")
        host.data["pty"]["cli_network"] = "tcp"
        host.data["pty"]["cli_address"] = f"127.0.0.1:{port}"
        host.write_config()
        code, said = host.run_expecting_failure()
        assert code == 1
        assert (f"pty.cli_address 127.0.0.1:{port}: Address already in use (another program, uid {NOBODY} "
                f"(nobody), listens there" in said), said
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        lines.close()


def test_the_host_names_the_owner_of_a_dead_socket_it_cannot_remove(shared_dir, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to run a process as another user")
    # nobody leaves a dead socket in the sticky directory; a host running as
    # another unprivileged user may not remove it.
    path = os.path.join(shared_dir, "pty.sock")

    def leave_a_dead_socket(report):
        import socket

        socket.socket(socket.AF_UNIX).bind(path)
        os.chmod(path, 0o777)  # anyone may connect: and find nobody listening

    pid, lines = run_as(NOBODY, leave_a_dead_socket)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    lines.close()
    from skypty.host.listeners import ListenError, clear_stale_unix_socket

    def check_as_another_user(report):
        try:
            clear_stale_unix_socket(path, "pty.cli_address")
        except ListenError as e:
            report(str(e))

    pid, lines = run_as(NOBODY - 1, check_as_another_user)
    said = lines.read()
    os.waitpid(pid, 0)
    assert f"cannot remove a dead socket, owned by uid {NOBODY} (nobody): " in said, said
    assert os.path.exists(path)
    clear_stale_unix_socket(path, "pty.cli_address")  # root may: a dead socket is a leftover
    assert not os.path.exists(path)


def test_a_revoked_connection_closes_after_its_answers_and_is_cut_if_it_does_not_read():
    # The answers to its pending calls (REVOKED) are queued on the transport
    # when the connection is dropped: an abort would discard them.
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from skypty.host.auth import make_portal
    from skypty.host.connection import REFUSAL_LINGER, HostConnectionFactory
    from skypty.host.whitelist import Whitelist

    class Avatar:
        def __init__(self, pk, entry_point):
            self.revoked = False

        def revoke(self):
            self.revoked = True

        def logout(self):
            pass

    class Transport(StringTransport):
        aborted = False

        def abortConnection(self):
            self.aborted = True

    own, _ = generate_keypair()
    guest, _ = generate_keypair()
    whitelist = Whitelist(own, extra=[guest])
    clock = Clock()
    factory = HostConnectionFactory(make_portal(whitelist, Avatar), "tcp", {}, lambda t: guest, clock, True)
    connection, transport = factory.buildProtocol(None), Transport()
    connection.makeConnection(transport)
    assert connection.avatar is not None
    whitelist.remove([guest])
    assert connection.avatar.revoked
    assert transport.disconnecting and not transport.aborted  # a clean close, after what is queued
    clock.advance(REFUSAL_LINGER - 0.1)
    assert not transport.aborted
    clock.advance(0.2)  # a peer that does not read is cut
    assert transport.aborted

"""One-shot exec with our stdin, as ssh runs `host cmd`: a pipe or a file on
stdin streams to the command (its EOF is ours); a terminal or /dev/null
sends nothing and keeps the one-round-trip pty.Exec."""

import subprocess
import time

import pytest

from tests.hosts import CLIENT, Host, env


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("exec-stdin")).start()
    yield h
    h.stop()


def exec_argv(host, *command, options=()):
    return CLIENT + ["exec", host.pk, "--via", host.target, "-i", host.config_path, *options, "--", *command]


def test_piped_stdin_reaches_a_one_shot_exec(host):
    r = subprocess.run(exec_argv(host, "cat"), input=b"hi\n", capture_output=True, env=env(), timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"hi\n", b"")


def test_piped_stdin_reaches_shell_with_a_command(host):
    r = subprocess.run(CLIENT + ["shell", host.target, "-i", host.config_path, "--", "wc", "-c"],
                       input=b"x" * 100_000, capture_output=True, env=env(), timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == b"100000", r


def test_a_file_on_stdin_streams_and_the_streams_and_status_stay_apart(host, tmp_path):
    path = tmp_path / "input"
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(5000)))  # more than one read
    with open(path, "rb") as f:
        r = subprocess.run(exec_argv(host, "sh", "-c", "wc -l; echo oops >&2; exit 3"), stdin=f,
                           capture_output=True, env=env(), timeout=60)
    assert (r.returncode, r.stdout.strip(), r.stderr) == (3, b"5000", b"oops\n")


def test_an_open_pipe_does_not_hold_a_finished_command(host):
    proc = subprocess.Popen(exec_argv(host, "echo", "done"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env())
    try:
        start = time.monotonic()
        while proc.poll() is None and time.monotonic() - start < 30:
            time.sleep(0.05)  # polling with a deadline: our stdin is never closed
        assert proc.returncode == 0 and proc.stdout.read() == b"done\n"
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()


def test_timeout_stops_a_streaming_command(host):
    proc = subprocess.Popen(exec_argv(host, "sleep", "30", options=("--timeout", "1s")), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    try:
        assert proc.wait(timeout=20) == 124
        assert proc.stderr.read() == b"[timed out after 1000ms]\n"
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()


def test_dev_null_keeps_the_plain_exec(host):
    before = len(host.log())
    r = subprocess.run(exec_argv(host, "cat"), stdin=subprocess.DEVNULL, capture_output=True, env=env(),
                       timeout=60)
    assert (r.returncode, r.stdout) == (0, b"")
    assert "piped command started" not in host.log()[before:]


def test_piped_stdin_reaches_a_host_over_dmsg(tmp_path):
    """Through the local host's proxy (the default exec), byte for byte."""
    import hashlib

    from tests.hosts import wait_for
    from tests.test_dmsg_e2e import DmsgNetwork, dmsg_host

    network = DmsgNetwork(tmp_path).start()
    a = dmsg_host(tmp_path, "a", network)
    b = dmsg_host(tmp_path, "b", network, whitelist=[a.pk])
    try:
        a.start()
        b.start()
        wait_for(lambda: network.joined(a) and network.joined(b), what="both hosts to join dmsg")
        data = bytes(range(256)) * 8192  # 2 MiB: more than pty.Exec's stdin could carry
        r = subprocess.run(CLIENT + ["exec", b.pk, "--cliaddr", a.cli, "--", "sha256sum"], input=data,
                           capture_output=True, env=env(), timeout=120)
        assert (r.returncode, r.stdout.split()[:1]) == (0, [hashlib.sha256(data).hexdigest().encode()]), r
    finally:
        for h in (a, b):
            h.stop()
        network.stop()

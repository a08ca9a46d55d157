"""Operating a host: the manhole, and the log lines for accepted and refused peers."""

import os
import re
import socket
import time

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


def manhole_eval(path, expression, pattern):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(expression.encode() + b"\r\n")
        data, deadline = b"", time.monotonic() + 10
        while not re.search(pattern, data.decode("latin-1")):
            if time.monotonic() > deadline:
                raise AssertionError(f"manhole said: {data!r}")
            data += s.recv(65536)
        return data.decode("latin-1")


def test_manhole_lists_live_sessions(host):
    assert os.stat(host.manhole).st_mode & 0o777 == 0o600
    before = manhole_eval(host.manhole, "print('n=%d' % len(sessions.list()))", r"n=\d+")
    count = int(re.search(r"n=(\d+)", before).group(1))
    import subprocess
    from tests.hosts import CLIENT, env
    proc = subprocess.Popen(CLIENT + ["start", "--cliaddr", host.cli, "-i", host.config_path, "--", "sleep", "30"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env())
    try:
        wait_for(lambda: b"session" in proc.stderr.peek(64) if proc.stderr else False, what="the session")
        out = manhole_eval(host.manhole, "print('ids=%s' % ','.join(s['command'] for s in sessions.list()))",
                           r"ids=[^\r\n]*sleep 30")
        assert "sleep 30" in out
    finally:
        proc.terminate()
        proc.wait()
    assert count >= 0


def test_log_lines_for_accepted_and_refused_peers_carry_pk_and_entry_point(host):
    from skypty.keys import generate_keypair

    stranger_pk, stranger_sk = generate_keypair()
    host.client("shell", host.target, "--sk", stranger_sk.hex(), "--", "true")
    host.client("shell", host.target, "-i", host.config_path, "--", "true")
    wait_for(lambda: f"refused {stranger_pk.hex()} on tcp" in host.log(), what="the refusal to be logged")
    wait_for(lambda: f"accepted {host.pk} on tcp" in host.log(), what="the acceptance to be logged")

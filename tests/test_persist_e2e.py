"""Persistent sessions end to end: the link drops, the client reattaches."""

import os
import subprocess

import pytest

from tests.hosts import CLIENT, Host, env, wait_for
from tests.relay import Relay


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("persist"), persistent=True).start()
    yield h
    h.stop()


def start_client(host, relay_path, command, out_path):
    """The client writes to a file, as a terminal would never block it; -t: a pty
    (a persistent session) although stdin is not a terminal."""
    out = open(out_path, "wb")
    proc = subprocess.Popen(CLIENT + ["start", "-t", "--cliaddr", relay_path, "-i", host.config_path, "--"] + command,
                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, env=env())
    out.close()
    return proc


def finish(proc, out_path):
    _, err = proc.communicate(timeout=60)
    with open(out_path, "rb") as f:
        return f.read(), err


def test_reattach_after_drops_prints_every_byte_once_in_order(host, tmp_path):
    relay = Relay(str(tmp_path / "relay.sock"), host.cli)
    lines = 20000  # ~200 KB: less than the 256 KiB ring, so no drop can lose output
    script = f'i=0; while [ $i -lt {lines} ]; do i=$((i+1)); echo line-$i; done'
    proc = start_client(host, relay.path, ["sh", "-c", script], tmp_path / "out")
    try:
        for threshold in (30_000, 90_000, 150_000):
            wait_for(lambda: relay.bytes_down > threshold or proc.poll() is not None, what="output")
            relay.cut()
        out, err = finish(proc, tmp_path / "out")
    finally:
        relay.shutdown()
    assert proc.returncode == 0, err
    expected = "".join(f"line-{i}\r\n" for i in range(1, lines + 1)).encode()
    assert out == expected
    assert relay.connections >= 2 and b"reattaching session" in err


def test_a_gap_larger_than_the_ring_is_reported(host, tmp_path):
    relay = Relay(str(tmp_path / "relay.sock"), host.cli)
    done = tmp_path / "done"
    script = (f"echo start; sleep 0.5; head -c 600000 /dev/zero | tr '\\0' x; echo; "
              f"touch {done}; echo end-marker; sleep 5")
    proc = start_client(host, relay.path, ["sh", "-c", script], tmp_path / "out")
    try:
        out_path = tmp_path / "out"
        wait_for(lambda: b"start" in out_path.read_bytes(), what="the first output")
        relay.close_listener()
        relay.cut()
        wait_for(lambda: os.path.exists(done), what="the big output to be written while detached")
        relay.open()
        out, err = finish(proc, tmp_path / "out")
    finally:
        relay.shutdown()
    assert proc.returncode == 0, err
    assert b"bytes of output were lost while disconnected" in err
    assert out.endswith(b"end-marker\r\n")
    assert out.count(b"x") < 600000


def test_sessions_are_listed_and_owned(host):
    r = host.client("list", "--sessions", "--cliaddr", host.cli)
    assert r.returncode == 0

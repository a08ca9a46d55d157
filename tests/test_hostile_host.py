"""Garbage at every entry point of a live host: it stays up and keeps serving."""

import os
import random
import socket

import pytest

from skypty.client.rpc import request_service
from skypty.client.transport import connect_unix
from skypty.wire import requestline
from tests.hosts import Host


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("hostile")).start()
    yield h
    h.stop()


def blast(connect, payloads):
    for payload in payloads:
        s = connect()
        try:
            s.settimeout(0.3)
            # The host may cut a garbage sender off mid-send (a reset): that is
            # its right, so any socket error here just ends this attempt.
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except OSError:
            pass
        finally:
            s.close()


def payloads(seed):
    rnd = random.Random(seed)
    out = [b"", b"\x00", b"\xff" * 70000, os.urandom(4096)]
    out += [rnd.randbytes(rnd.randint(1, 2000)) for _ in range(8)]
    out += [requestline.encode_request("dmsgpty/pty") + rnd.randbytes(rnd.randint(1, 3000)) for _ in range(5)]
    out += [requestline.encode_request("dmsgpty/whitelist") + b"\xfc\xff\xff\xff\xff" + os.urandom(100)]
    out += [b"\xff" + b"a" * 255 + b"rest", b"\x05abc"]
    return out


def test_garbage_everywhere_then_the_host_still_serves(host):
    before = len(host.children())
    blast(lambda: _unix(host.cli), payloads(1))
    blast(lambda: socket.create_connection(("127.0.0.1", host.tcp_port)), payloads(2))
    blast(lambda: socket.create_connection(("127.0.0.1", host.web_port)), payloads(3))
    blast(lambda: socket.create_connection(("127.0.0.1", host.server_port)), payloads(4))
    blast(lambda: socket.create_connection(("127.0.0.1", host.discovery_port)), payloads(5))
    assert host.proc.poll() is None
    r = host.client("shell", host.target, "-i", host.config_path, "--", "echo", "alive")
    assert (r.returncode, r.stdout) == (0, b"alive\n")
    channel = connect_unix(host.cli)
    request_service(channel, requestline.WHITELIST)
    channel.close()
    assert len(host.children()) <= before
    assert "Unhandled" not in host.log() and "Traceback" not in host.log()


def _unix(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    return s

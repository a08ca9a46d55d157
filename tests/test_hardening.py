"""Issue #13 regressions against a real host: refusals that always reach the
stranger, revocation of live sessions, dead links noticed."""

import socket

import pytest

from skypty.client.transport import connect_noise
from skypty.keys import PublicKey, generate_keypair
from skypty.wire import requestline
from tests.hosts import Host, wait_for


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("hardening")).start()
    yield h
    h.stop()


def test_a_stranger_on_the_noise_port_sees_a_clean_close_not_a_reset(host):
    # Regression (#13.1): the host refused with an abort while the stranger's
    # request line was in flight, so the stranger got "connection reset" on
    # its send or recv.  Force the worst timing: the request line goes out
    # only after the host has already decided.
    pk, sk = generate_keypair()
    channel = connect_noise("127.0.0.1", host.tcp_port, PublicKey.from_hex(host.pk), sk)
    try:
        wait_for(lambda: f"refused {pk.hex()} on tcp" in host.log(), what="the host to refuse")
        channel.send(requestline.encode_request(requestline.PTY))  # must not raise EPIPE/ECONNRESET
        channel.settimeout(10)
        assert channel.recv() == b""  # EOF, which the client reports as "not authorized"
    finally:
        channel.close()


def test_the_client_reports_every_refusal_as_not_authorized(host):
    _pk, sk = generate_keypair()
    for _ in range(10):
        r = host.client("shell", host.target, "--sk", sk.hex(), "--", "echo", "in")
        assert r.returncode == 1
        assert b"not authorized" in r.stderr, r.stderr


def test_a_refused_peer_that_never_closes_is_dropped_after_the_linger(host):
    _pk, sk = generate_keypair()
    channel = connect_noise("127.0.0.1", host.tcp_port, PublicKey.from_hex(host.pk), sk)
    try:
        channel.settimeout(15)
        assert channel.recv() == b""  # the host's FIN, while we keep our side open
        # keep sending: the host drains until it closes for good, then resets
        def closed():
            try:
                channel.send(b"x" * 1024)
            except OSError:
                return True
            return False
        wait_for(closed, timeout=15, what="the host to close the lingering connection")
    finally:
        channel.close()

"""Issue #25: a hostile local user, and what a revoked client is told.

Revocation: whitelist-remove ends a live session; the client must say why
and exit 1 (it printed "CancelledError", or nothing and exit 0 with -T).
"""

import subprocess

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

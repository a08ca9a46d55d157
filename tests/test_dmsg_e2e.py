"""The dmsg overlay end to end: real hosts, a real dmsg server and discovery."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pexpect
import pytest

from skypty.keys import generate_keypair
from tests.hosts import CLIENT, REPO, Host, env, free_port, wait_for


class DmsgNetwork:
    """`twistd skypty-dmsg`: discovery + server on fixed loopback ports."""

    def __init__(self, tmp, name="dmsg", discovery_port=None, seed="skypty-dmsg", peers=()):
        self.dir, self.name, self.seed, self.peers = str(tmp), name, seed, list(peers)
        self.own_discovery = discovery_port is None
        self.discovery_port, self.server_port = discovery_port or free_port(), free_port()
        self.proc = None

    @property
    def pk(self):
        import hashlib

        from skypty.keys import SecretKey

        return SecretKey(hashlib.sha256(self.seed.encode()).digest()).public_key.hex()

    @property
    def address(self):
        return f"127.0.0.1:{self.server_port}"

    def start(self):
        where = (["--discovery", f"127.0.0.1:{self.discovery_port}"] if self.own_discovery else
                 ["--discovery", "", "--discovery-url", f"http://127.0.0.1:{self.discovery_port}"])
        peers = [arg for p in self.peers for arg in ("--peer", f"{p.pk}@{p.address}")]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "--logfile", f"{self.dir}/{self.name}.log", "skypty-dmsg", *where, "--seed", self.seed,
             "--server", self.address, *peers],
            cwd=self.dir, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.entry_count() is not None and self.pk in [s["static"] for s in self.servers()],
                 what=f"the dmsg server {self.name}")
        return self

    def get(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.discovery_port}/dmsg-discovery/{path}",
                                        timeout=5) as r:
                return json.load(r)
        except OSError:
            return None

    def entry_count(self):
        entries = self.get("entries")
        return None if entries is None else len(entries)

    def servers(self):
        return self.get("available_servers") or []

    def joined(self, host):
        entry = self.get(f"entry/{host.pk}")
        return bool(entry and entry.get("client", {}).get("delegated_servers"))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)


def dmsg_host(tmp, name, network, whitelist=()):
    h = Host(tmp, name, embedded=False, discovery_port=network.discovery_port)
    h.data["pty"]["whitelist"] = list(whitelist)
    h.write_config()
    return h


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dmsg")
    network = DmsgNetwork(tmp).start()
    a = dmsg_host(tmp, "a", network)
    b = dmsg_host(tmp, "b", network, whitelist=[a.pk])
    a.start()
    b.start()
    wait_for(lambda: network.joined(a) and network.joined(b), what="both hosts to join dmsg")
    yield network, a, b
    for h in (a, b):
        h.stop()
    network.stop()


def test_exec_over_dmsg_through_the_local_host(net):
    network, a, b = net
    r = a.client("exec", b.pk, "--cliaddr", a.cli, "--", "sh", "-c", "echo out; echo err >&2; exit 5")
    assert (r.returncode, r.stdout, r.stderr) == (5, b"out\n", b"err\n")


def test_the_remote_whitelist_decides(net):
    network, a, b = net
    r = b.client("exec", a.pk, "--cliaddr", b.cli, "--", "true")  # a does not whitelist b
    assert r.returncode == 1 and b"not authorized" in r.stderr


def test_offline_peer_fails_fast_with_a_clear_error(net):
    network, a, b = net
    ghost, _ = generate_keypair()
    start = time.monotonic()
    r = a.client("exec", ghost.hex(), "--cliaddr", a.cli, "--", "true")
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1
    assert time.monotonic() - start < 5


def test_a_wrong_dmsg_port_says_check_port(net):
    """#26 item 1: this used to print "did not answer over dmsg (it stopped, or
    lost its dmsg session)" although b was up and logged "nothing listens"."""
    network, a, b = net
    start = time.monotonic()
    r = a.client("exec", b.pk, "--port", "23", "--cliaddr", a.cli, "--", "true")
    assert r.returncode == 1
    assert r.stderr.decode() == (f"skypty-client: host {b.pk} refused the stream: nothing listens on its "
                                 f"dmsg port 23 (check --port)\n")
    assert time.monotonic() - start < 3  # told at once, not after a timeout


def test_skynet_scheme_is_refused_clearly(net):
    network, a, b = net
    r = a.client("exec", b.pk, "--scheme", "skynet", "--cliaddr", a.cli, "--", "true")
    assert r.returncode == 1 and b"skynet is not available" in r.stderr and b"visor" in r.stderr
    assert r.stderr.count(b"\n") == 1


def test_interactive_session_over_dmsg(net):
    network, a, b = net
    child = pexpect.spawn(CLIENT[0], CLIENT[1:] + ["start", b.pk, "--cliaddr", a.cli, "-i", a.config_path],
                          env=env(), timeout=20)
    child.expect(r"\$ |# ")
    child.sendline("echo on-$((2*3)); exit")
    child.expect("on-6")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_list_shows_the_peers(net):
    network, a, b = net
    r = a.client("list", "--cliaddr", a.cli)
    assert b.pk.encode() in r.stdout


def test_server_restart_then_new_streams_work(tmp_path):
    network = DmsgNetwork(tmp_path).start()
    a = dmsg_host(tmp_path, "a", network)
    b = dmsg_host(tmp_path, "b", network, whitelist=[a.pk])
    try:
        a.start()
        b.start()
        wait_for(lambda: network.joined(a) and network.joined(b), what="both hosts to join")
        assert a.client("exec", b.pk, "--cliaddr", a.cli, "--", "echo", "1").stdout == b"1\n"
        network.stop()
        network.start()  # same ports, same server key; discovery starts empty
        wait_for(lambda: network.joined(a) and network.joined(b), timeout=60, what="both hosts to rejoin")
        wait_for(lambda: a.client("exec", b.pk, "--cliaddr", a.cli, "--", "echo", "2").stdout == b"2\n",
                 timeout=30, what="a new stream after the restart")
    finally:
        for h in (a, b):
            h.stop()
        network.stop()


def test_hosts_on_different_servers_reach_each_other_through_the_mesh(tmp_path):
    one = DmsgNetwork(tmp_path, "one")
    two = DmsgNetwork(tmp_path, "two", discovery_port=one.discovery_port, seed="second server")
    one.peers, two.peers = [two], [one]
    a = dmsg_host(tmp_path, "a", one)
    b = dmsg_host(tmp_path, "b", one, whitelist=[a.pk])
    a.data["dmsg"]["servers"], b.data["dmsg"]["servers"] = [one.pk], [two.pk]  # a on one, b on two
    a.write_config()
    b.write_config()
    try:
        one.start()
        two.start()
        wait_for(lambda: f"peered with dmsg server {one.pk}" in open(f"{tmp_path}/two.log").read()
                 and f"peered with dmsg server {two.pk}" in open(f"{tmp_path}/one.log").read(),
                 what="the two servers to peer")
        a.start()
        b.start()
        delegated = lambda h: (one.get(f"entry/{h.pk}") or {}).get("client", {}).get("delegated_servers")  # noqa
        wait_for(lambda: delegated(a) == [one.pk] and delegated(b) == [two.pk], what="a on one, b on two")
        r = a.client("exec", b.pk, "--cliaddr", a.cli, "--", "echo", "through the mesh")
        assert (r.returncode, r.stdout) == (0, b"through the mesh\n"), r.stderr
        assert delegated(a) == [one.pk]  # no session of a's own to two: server one forwarded it
    finally:
        for h in (a, b):
            h.stop()
        two.stop()
        one.stop()


def test_discovery_down_at_start_then_joins(tmp_path):
    network = DmsgNetwork(tmp_path)  # not started yet
    b = dmsg_host(tmp_path, "b", network)
    try:
        b.start()  # the control socket and TCP port serve regardless
        r = b.client("shell", b.target, "-i", b.config_path, "--", "echo", "tcp-ok")
        assert r.stdout == b"tcp-ok\n"
        network.start()
        wait_for(lambda: network.joined(b), timeout=60, what="the host to join once discovery is up")
    finally:
        b.stop()
        network.stop()


def test_web_terminal_for_a_remote_host_over_dmsg(net, browser):
    from tests.test_web import screen_text, type_line, wait_text, web_url

    network, a, b = net
    browser.get(web_url(a).replace("/pty?", f"/pty/{b.pk}?"))  # b whitelists a
    wait_text(browser, r"[$#]\s*$")
    # Shells start in the home directory: the host process's own directory names the host.
    type_line(browser, "echo remote-$((5*5)) $(basename $(readlink /proc/$PPID/cwd))")
    wait_text(browser, r"\nremote-25 b\b")
    browser.get(web_url(b).replace("/pty?", f"/pty/{a.pk}?"))  # a does not whitelist b
    wait_text(browser, r"not authorized")
    assert "not authorized" in screen_text(browser)


def probe(network, sk_hex, target, path):
    r = subprocess.run([sys.executable, "-m", "tests.dmsg_http_probe",
                        f"http://127.0.0.1:{network.discovery_port}", sk_hex, target, path],
                       capture_output=True, timeout=60, env=env(), cwd=REPO)
    return r.stdout.decode().strip()


def test_web_terminal_over_dmsg_port_80_is_gated_by_the_whitelist(net):
    network, a, b = net
    # The probe is a dmsg peer of its own (one key = one session on the server).
    friend_pk, friend = generate_keypair()
    assert b.client("whitelist-add", friend_pk.hex(), "--cliaddr", b.cli).returncode == 0
    try:
        assert probe(network, friend.hex(), b.pk, "/pty").startswith("HTTP/1.0 200")
    finally:
        b.client("whitelist-remove", friend_pk.hex(), "--cliaddr", b.cli)
    _, stranger = generate_keypair()
    assert probe(network, stranger.hex(), b.pk, "/pty").startswith("HTTP/1.0 403")


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")
def test_fs_mount_of_a_remote_host_over_dmsg(net, tmp_path):
    from tests.test_fs_mount import mount_processes, mounted

    network, a, b = net
    share = os.path.join(b.dir, "share")
    os.makedirs(share, exist_ok=True)
    with open(os.path.join(share, "on-b.txt"), "w") as f:
        f.write("from b\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = a.client("fs", "mount", b.pk, str(mnt), "--cliaddr", a.cli, "-i", a.config_path, "--remote-root", share)
    assert r.returncode == 0, r.stderr.decode()
    try:
        assert (mnt / "on-b.txt").read_text() == "from b\n"
        (mnt / "from-a.txt").write_bytes(b"a" * 300_000)
        with open(os.path.join(share, "from-a.txt"), "rb") as f:
            assert f.read() == b"a" * 300_000
    finally:
        r = a.client("fs", "umount", str(mnt))
        assert r.returncode == 0, r.stderr.decode()
    wait_for(lambda: not mount_processes(mnt), timeout=15, what="the mount process to exit")
    assert not mounted(mnt)
    # a does not whitelist b: b cannot mount a
    r = b.client("fs", "mount", a.pk, str(mnt), "--cliaddr", b.cli, "-i", b.config_path)
    assert r.returncode == 1 and b"not authorized" in r.stderr and r.stderr.count(b"\n") == 1, r.stderr

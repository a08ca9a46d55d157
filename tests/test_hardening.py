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


def _rpc(channel):
    from skypty.client.rpc import BlockingRPC, request_service

    return BlockingRPC(channel, request_service(channel, requestline.PTY))


def _gone(channel):
    """True once the host has closed this channel (EOF or reset)."""
    import select

    ready, _, _ = select.select([channel], [], [], 0)
    if not ready:
        return False
    try:
        return channel.recv() == b""
    except OSError:
        return True


def test_whitelist_remove_ends_live_sessions_on_every_entry_point(tmp_path):
    # Regression (#13.6): after whitelist-remove the key's open shell kept working.
    from skypty.client.transport import connect_control
    from skypty.wire import types as T

    a = Host(tmp_path, "a", persistent=True).start()
    b = Host(tmp_path, "b", embedded=False, discovery_port=a.discovery_port).start()
    try:
        pk, sk = generate_keypair()
        assert a.client("whitelist-add", pk.hex(), b.pk, "--cliaddr", a.cli).returncode == 0
        a_pk = PublicKey.from_hex(a.pk)
        sleep = T.CommandReq.cls(name="sleep", arg=["600"])
        baseline = len(a.children())

        shell = connect_noise("127.0.0.1", a.tcp_port, a_pk, sk)  # a plain shell over TCP
        _rpc(shell).call("pty.Start", sleep, T.CommandReq, T.EMPTY)
        detached = connect_noise("127.0.0.1", a.tcp_port, a_pk, sk)  # a persistent one, then detached
        _rpc(detached).call("pty.StartSession", sleep, T.CommandReq, T.STRING)
        detached.close()
        execing = connect_noise("127.0.0.1", a.tcp_port, a_pk, sk)  # a one-shot command in flight
        _rpc(execing).start("pty.Exec", T.CommandExecReq.cls(name="sleep", arg=["600"]),
                            T.CommandExecReq, T.CommandExecResult)
        # b reaches a over dmsg through b's own control socket (b's key)
        wait_for(lambda: b.client("exec", a.pk, "--cliaddr", b.cli, "--", "true").returncode == 0,
                 timeout=30, what="b to reach a over dmsg")
        proxied = connect_control("unix", b.cli)
        from skypty.client.rpc import BlockingRPC, request_service

        BlockingRPC(proxied, request_service(proxied, requestline.proxy_uri(a.pk, 22))).call(
            "pty.Start", sleep, T.CommandReq, T.EMPTY)
        wait_for(lambda: len(a.children()) >= baseline + 4, what="four processes for the two keys")

        for key in (pk.hex(), b.pk):
            assert a.client("whitelist-remove", key, "--cliaddr", a.cli).returncode == 0
        for channel in (shell, execing, proxied):
            wait_for(lambda: _gone(channel), what="the revoked key's connection to drop")
        wait_for(lambda: len(a.children()) == baseline, what="the revoked keys' processes to end")
        assert [p for p, state in a.children() if state == "Z"] == []
        log = a.log()
        assert f"revoked {pk.hex()}" in log and f"revoked {b.pk}" in log
        assert "owner taken off the whitelist" in log  # the detached session is gone too
        for channel in (shell, execing, proxied):
            channel.close()
    finally:
        b.stop()
        a.stop()


BLACKHOLE_CLIENT = """
import sys
from skypty.client.rpc import BlockingRPC, request_service
from skypty.client.transport import connect_noise
from skypty.keys import PublicKey, SecretKey
from skypty.wire import types as T
host, port, pk, sk = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
channel = connect_noise(host, port, PublicKey.from_hex(pk), SecretKey.from_hex(sk))
rpc = BlockingRPC(channel, request_service(channel, "dmsgpty/pty"))
rpc.call("pty.Start", T.CommandReq.cls(name="sleep", arg=["600"]), T.CommandReq, T.EMPTY)
print("started", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def netns():
    """A network namespace joined to this one by a veth pair (10.213.N.1 here,
    .2 there), so a test can black-hole a live TCP connection."""
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.fail("the black-hole test needs root and iproute2 (CI runs as root; install-test-deps installs iproute2)")
    n = os.getpid() % 200 + 20
    name, here, there = f"skypty{os.getpid()}", f"skh{os.getpid()}", f"skn{os.getpid()}"
    run = lambda *cmd: subprocess.run(cmd, check=True, capture_output=True)  # noqa: E731
    run("ip", "netns", "add", name)
    try:
        run("ip", "link", "add", here, "type", "veth", "peer", "name", there)
        run("ip", "link", "set", there, "netns", name)
        run("ip", "addr", "add", f"10.213.{n}.1/30", "dev", here)
        run("ip", "link", "set", here, "up")
        run("ip", "netns", "exec", name, "ip", "addr", "add", f"10.213.{n}.2/30", "dev", there)
        run("ip", "netns", "exec", name, "ip", "link", "set", there, "up")
        run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name, f"10.213.{n}.1", lambda: run("ip", "netns", "exec", name, "ip", "link", "set", there, "down")
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_a_black_holed_tcp_client_loses_its_shell(tmp_path, netns, monkeypatch):
    # Regression (#13.10): a client whose link silently died kept its shell
    # for 70 s and more.  TCP keepalive notices; the timers are shortened
    # here (the default notices within about a minute).
    import subprocess
    import sys

    from tests.hosts import env

    name, address, black_hole = netns
    monkeypatch.setenv("SKYPTY_TCP_KEEPALIVE", "2,1,2")
    host = Host(tmp_path, "bh")
    host.data["pty"]["ssh_listen"] = f":{host.tcp_port}"
    host.write_config()
    host.start()
    client = None
    try:
        baseline = len(host.children())
        client = subprocess.Popen(
            ["ip", "netns", "exec", name, sys.executable, "-c", BLACKHOLE_CLIENT, address, str(host.tcp_port),
             host.pk, host.data["sk"]],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env())
        assert client.stdout.readline() == b"started\n"
        wait_for(lambda: len(host.children()) == baseline + 1, what="the client's shell")
        black_hole()  # no FIN, no RST: packets just stop
        wait_for(lambda: len(host.children()) == baseline, timeout=30,
                 what="the host to notice the dead link and end the shell")
    finally:
        if client is not None:
            client.kill()
            client.wait()
        host.stop()


def _run_dmsg_peer(host, script):
    """Run *script(client, reactor)* (an async function) in a fresh process
    that is a dmsg peer of *host* with its own whitelisted key; -> its stdout lines."""
    import subprocess
    import sys
    import textwrap

    from tests.hosts import env

    wait_for(host.joined_dmsg, what="the host to join its embedded dmsg network")
    pk, sk = generate_keypair()
    assert host.client("whitelist-add", pk.hex(), "--cliaddr", host.cli).returncode == 0
    program = textwrap.dedent('''
        import sys
        from twisted.internet import defer, protocol, task
        from skypty.config import parse_config
        from skypty.dmsg.client import DmsgClientEndpoint, DmsgClientService
        from skypty.keys import PublicKey
        from skypty.wire import requestline

        class Probe(protocol.Protocol):
            def __init__(self):
                self.data, self.ended = b"", defer.Deferred()
            def dataReceived(self, data):
                self.data += data
            def connectionLost(self, reason):
                self.ended.callback(self.data)

        async def connect(client, pk, payload):
            probe = Probe()
            await DmsgClientEndpoint(client, pk, 22).connect(protocol.Factory.forProtocol(lambda: probe))
            probe.transport.write(payload)
            return probe

        async def main(reactor, discovery, sk_hex, target):
            client = DmsgClientService(reactor, parse_config({"sk": sk_hex, "dmsg": {"discovery": discovery}}))
            client.startService()
            for _ in range(400):
                if client.sessions:
                    break
                await task.deferLater(reactor, 0.05, lambda: None)
            pk = PublicKey.from_hex(target)
    ''') + textwrap.indent(textwrap.dedent(script), "    ") + textwrap.dedent('''
            client.stopService()

        task.react(lambda r: defer.ensureDeferred(main(r, *sys.argv[1:4])))
    ''')
    out = subprocess.run([sys.executable, "-c", program, f"http://127.0.0.1:{host.discovery_port}", sk.hex(),
                          host.pk], capture_output=True, timeout=60, env=env())
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode().split("\n")


def test_bad_request_lines_over_dmsg_end_their_stream_only(host):
    # Regression (#13.5): the request line b"\x04///[" made urlsplit raise out
    # of the stream, through yamux, and dropped the peer's whole dmsg session.
    lines = _run_dmsg_peer(host, '''
        session = next(iter(client.sessions.values()))
        good = await connect(client, pk, requestline.encode_request(requestline.PTY))
        for bad in (b"\\x04///[", b"\\x05//*:1", b"\\x0c//[v1.x]/pty", b"\\x03\\xff\\xfe\\xfd", b"\\x02\\x00\\x00"):
            probe = await connect(client, pk, bad)
            reply = await probe.ended.addTimeout(10, reactor)
            print("bad", reply[:1].hex())
        print("good-open", not good.ended.called, good.data[:1].hex())
        print("same-session", next(iter(client.sessions.values())) is session)
        again = await connect(client, pk, requestline.encode_request(requestline.PTY))
        while not again.data:
            await task.deferLater(reactor, 0.02, lambda: None)
        print("new-stream", again.data[:1].hex())
    ''')
    assert lines.count("bad 01") == 5, lines
    assert "good-open True 00" in lines and "same-session True" in lines and "new-stream 00" in lines
    assert host.proc.poll() is None
    assert "Unhandled" not in host.log() and "Traceback" not in host.log()

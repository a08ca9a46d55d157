"""The host end to end: a real twistd process, the real client, loopback only."""

import os

import pexpect
import pytest

from skypty.client.rpc import BlockingRPC, request_service
from skypty.client.transport import connect_noise
from skypty.keys import PublicKey, SecretKey, generate_keypair
from skypty.wire import types as T
from tests.hosts import CLIENT, Host, env, wait_for


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("e2e")).start()
    yield h
    h.stop()


def test_one_shot_mirrors_streams_and_exit_code(host):
    r = host.client("shell", host.target, "-i", host.config_path, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, b"out\n", b"err\n")


def test_timeout_exits_124(host):
    r = host.client("shell", host.target, "-i", host.config_path, "--timeout", "1s", "--", "sleep", "30")
    assert r.returncode == 124
    assert b"[timed out after 1000ms]" in r.stderr


def test_output_is_capped_at_16_mib_with_a_notice(host):
    r = host.client("shell", host.target, "-i", host.config_path, "--", "head", "-c", "20971520", "/dev/zero")
    assert r.returncode == 0
    assert len(r.stdout) == 16 * 1024 * 1024
    assert b"stdout truncated at 16 MiB" in r.stderr


def test_exec_via_tcp_and_bare_timeout_seconds(host):
    r = host.client("exec", host.pk, "--via", "tcp://" + host.target, "-i", host.config_path,
                    "--timeout", "5", "--", "echo", "via")
    assert (r.returncode, r.stdout) == (0, b"via\n")


def test_bad_inputs_give_one_clear_line(host):
    r = host.client("shell", "nothex@127.0.0.1:1", "-i", host.config_path, "--", "true")
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1 and b"host key" in r.stderr
    other_pk, _ = generate_keypair()
    r = host.client("shell", f"{other_pk.hex()}@127.0.0.1:{host.tcp_port}", "-i", host.config_path, "--", "true")
    assert (r.returncode, r.stderr.decode()) == (
        1, f"skypty-client: the host at 127.0.0.1:{host.tcp_port} is not {other_pk.hex()} (wrong public key?)\n")


def test_interactive_shell_through_a_real_pty(host):
    child = pexpect.spawn(CLIENT[0], CLIENT[1:] + ["shell", host.target, "-i", host.config_path],
                          env=env(), dimensions=(24, 80), timeout=20)
    child.expect(r"\$ |# ")
    child.sendline("echo hi-$((40+2))")
    child.expect("hi-42")
    child.sendline("stty size")
    child.expect("24 80")
    child.setwinsize(40, 100)  # the client forwards SIGWINCH as pty.SetPtySize
    child.sendline("stty size")
    child.expect("40 100")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_local_start_through_the_control_socket(host):
    child = pexpect.spawn(CLIENT[0], CLIENT[1:] + ["start", "--cliaddr", host.cli, "-i", host.config_path],
                          env=env(), timeout=20)
    child.expect(r"\$ |# ")  # like a person: wait for the prompt, then type
    child.sendline("echo local-$((1+1)); exit")
    child.expect("local-2")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_whitelist_add_and_remove_take_effect_at_once(host):
    pk, sk = generate_keypair()
    before = set(host.children())
    r = host.client("shell", host.target, "--sk", sk.hex(), "--", "touch", "/tmp/should-not-exist")
    assert r.returncode == 1 and b"not authorized" in r.stderr
    assert set(host.children()) <= before  # nothing was spawned for the stranger
    assert host.client("whitelist-add", pk.hex(), "--cliaddr", host.cli).returncode == 0
    assert pk.hex().encode() in host.client("whitelist", "--cliaddr", host.cli).stdout
    r = host.client("shell", host.target, "--sk", sk.hex(), "--", "echo", "in")
    assert (r.returncode, r.stdout) == (0, b"in\n")
    with open(host.config_path) as f:
        assert pk.hex() in f.read()  # persisted for the next start
    assert host.client("whitelist-remove", pk.hex(), "--cliaddr", host.cli).returncode == 0
    r = host.client("shell", host.target, "--sk", sk.hex(), "--", "echo", "in")
    assert r.returncode == 1 and b"not authorized" in r.stderr
    r = host.client("whitelist-remove", host.pk, "--cliaddr", host.cli)
    assert r.returncode == 1 and b"own key" in r.stderr


def test_200_execs_leave_no_zombies_and_no_leaked_fds(host):
    sk = SecretKey.from_hex(host.data["sk"])
    pk = PublicKey.from_hex(host.pk)

    def one():
        channel = connect_noise("127.0.0.1", host.tcp_port, pk, sk)
        rpc = BlockingRPC(channel, request_service(channel, "dmsgpty/pty"))
        result = rpc.call("pty.Exec", T.CommandExecReq.cls(name="true"), T.CommandExecReq, T.CommandExecResult)
        channel.close()
        return result.exit_code

    assert one() == 0
    fds = host.fd_count()
    for _ in range(200):
        assert one() == 0
    wait_for(lambda: host.fd_count() <= fds, what="the host's fds to settle")
    assert [pid for pid, state in host.children() if state == "Z"] == []
    assert host.children() == []


def test_stale_control_socket_is_replaced_and_a_live_one_refused(tmp_path):
    first = Host(tmp_path, "a").start()
    try:
        second = Host(tmp_path, "b")
        second.data["pty"]["cli_address"] = first.cli
        second.write_config()
        second.cli = first.cli
        code, said = second.run_expecting_failure()
        assert code != 0 and "another host is already listening" in said
    finally:
        first.proc.kill()  # a crash leaves the socket file behind
        first.proc.wait()
    assert os.path.exists(first.cli)
    first.start()  # ...and a new host replaces it
    try:
        assert os.stat(first.cli).st_mode & 0o777 == 0o600
    finally:
        first.stop()

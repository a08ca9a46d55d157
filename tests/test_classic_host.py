"""exec and list against hosts that answer only the classic methods (#19.7):
directly, and through a reference-style proxy that relays only those."""

import pytest

from tests.classic_host import ClassicHost
from tests.hosts import wait_for
from tests.test_client_ux import run

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    from tests.test_dmsg_e2e import DmsgNetwork, dmsg_host

    tmp = tmp_path_factory.mktemp("classic")
    network = DmsgNetwork(tmp).start()

    full = dmsg_host(tmp, "full", network)
    classic = ClassicHost(tmp, "classic", embedded=False, discovery_port=network.discovery_port)
    full.data["pty"]["whitelist"] = [classic.pk]  # the classic host's proxy dials the full one
    full.write_config()
    classic.data["pty"]["whitelist"] = [full.pk]  # and the full one reaches the classic one (cp)
    classic.write_config()
    for h in (full, classic):
        h.start()
    wait_for(lambda: network.joined(full) and network.joined(classic), what="the hosts to join dmsg")
    yield network, full, classic
    for h in (full, classic):
        h.stop()
    network.stop()


def ways(net):
    """How each test reaches a host: (name, argv prefix before --)."""
    network, full, classic = net
    return {
        "full, direct": ["shell", full.target, "-i", full.config_path],
        "classic, direct": ["shell", classic.target, "-i", classic.config_path],
        "classic proxy": ["exec", full.pk, "--cliaddr", classic.cli],
    }


def test_classic_host_really_lacks_the_extensions(net):
    network, full, classic = net
    from skypty.client.rpc import BlockingRPC, request_service
    from skypty.client.transport import connect_control
    from skypty.wire import types as T
    from skypty.wire.rpc import RPCError

    channel = connect_control("unix", classic.cli)
    rpc = BlockingRPC(channel, request_service(channel, "dmsgpty/pty"))
    with pytest.raises(RPCError, match="can't find method pty.Exec"):
        rpc.call("pty.Exec", T.CommandExecReq.cls(name="true"), T.CommandExecReq, T.CommandExecResult)
    channel.close()


@pytest.mark.parametrize("way", ["full, direct", "classic, direct", "classic proxy"])
def test_exit_status(net, way):
    r = run(*ways(net)[way], "--", "sh", "-c", "echo out; exit 7")
    assert (r.returncode, r.stdout) == (7, b"out\n")


@pytest.mark.parametrize("way", ["full, direct", "classic, direct", "classic proxy"])
def test_stderr_is_merged_only_on_a_classic_host(net, way):
    r = run(*ways(net)[way], "--", "sh", "-c", "echo out; echo err >&2")
    if way.startswith("full"):
        assert (r.returncode, r.stdout, r.stderr) == (0, b"out\n", b"err\n")
    else:
        assert (r.returncode, r.stdout, r.stderr) == (0, b"out\nerr\n", b"")


@pytest.mark.parametrize("way", ["full, direct", "classic, direct", "classic proxy"])
def test_timeout_exits_124(net, way):
    r = run(*ways(net)[way], "--timeout", "1s", "--", "sleep", "30")
    assert (r.returncode, r.stderr) == (124, b"[timed out after 1000ms]\n")


@pytest.mark.parametrize("way", ["full, direct", "classic, direct", "classic proxy"])
def test_one_mib_of_output_byte_for_byte(net, way):
    # every byte value, newlines and CRs included: the pty must be raw
    r = run(*ways(net)[way], "--", "sh", "-c", f"f=$(mktemp); head -c {MIB} /dev/urandom >$f; "
                                                "sha256sum <$f >&2; cat $f; rm -f $f")
    import hashlib

    digest = hashlib.sha256(r.stdout[-MIB:]).hexdigest()
    assert r.returncode == 0
    assert len(r.stdout) >= MIB and digest.encode() in r.stdout + r.stderr


@pytest.mark.parametrize("way", ["classic, direct", "classic proxy"])
def test_output_cap_and_shell_strings_on_a_classic_host(net, way):
    r = run(*ways(net)[way], "--", "head -c 17000000 /dev/zero")  # one shell-syntax string
    assert r.returncode == 0 and len(r.stdout) == 16 * MIB
    assert r.stderr == b"[skypty: output truncated at 16 MiB]\n"


def test_stdin_on_a_classic_host(net):
    network, full, classic = net
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    r = run("exec", full.pk, "--cliaddr", classic.cli, "--stdin", "--", "sha256sum", input=data)
    import hashlib

    assert (r.returncode, r.stdout.split()[0].decode()) == (0, hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("way", ["classic, direct", "classic proxy"])
def test_piped_stdin_without_stdin_flag_on_a_classic_host(net, way):
    """No pty.StartPiped there: stdin goes whole, as with --stdin."""
    r = run(*ways(net)[way], "--", "wc", "-c", input=b"x" * 1000)
    assert (r.returncode, r.stdout.strip()) == (0, b"1000")


def test_list_says_the_host_does_not_offer_it(net):
    network, full, classic = net
    r = run("list", "--cliaddr", classic.cli)
    assert (r.returncode, r.stderr.decode()) == (
        1, "skypty-client: the local host does not offer `list` (host.Peers): it is an older or a "
           "reference host; `list` needs a skypty host\n")


def test_list_sessions_says_the_host_has_no_such_feature(net):
    """Not "pty.persistent_sessions is off": a reference host has no such setting (#22)."""
    network, full, classic = net
    r = run("list", "--sessions", "--cliaddr", classic.cli)
    assert (r.returncode, r.stderr.decode()) == (
        1, "skypty-client: this host does not offer persistent sessions (a reference host, or an "
           "older skypty), so there are none to list\n")


def test_whitelist_verbs_are_no_ops_for_keys_already_in_place(net):
    """A reference host fails a WhitelistAdd naming a key it has (#22): adding
    it again, or removing an absent key, must still succeed and change nothing."""
    from skypty.keys import generate_keypair

    network, full, classic = net
    known, absent = classic.pk, generate_keypair()[0].hex()  # its own key is always listed
    before = run("whitelist", "--cliaddr", classic.cli)
    assert known in before.stdout.decode()
    r = run("whitelist-add", known, "--cliaddr", classic.cli)
    assert (r.returncode, r.stdout.decode()) == (0, f"{known} was already whitelisted (nothing changed)\n")
    r = run("whitelist-remove", absent, "--cliaddr", classic.cli)
    assert (r.returncode, r.stdout.decode()) == (0, f"{absent} was not on the whitelist (nothing to remove)\n")
    # a mix: only the new key is sent, so the call succeeds on a reference host
    r = run("whitelist-add", known, absent, "--cliaddr", classic.cli)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == [f"{known} was already whitelisted (nothing changed)",
                                              f"added {absent}"]
    assert run("whitelist-remove", absent, "--cliaddr", classic.cli).returncode == 0
    assert run("whitelist", "--cliaddr", classic.cli).stdout == before.stdout


def test_cp_and_fs_to_a_host_without_sftp_say_so(net, tmp_path):
    """A reference host whitelists us (exec works) but serves no files: say
    that, not "not authorized" (#22)."""
    network, full, classic = net
    assert run("exec", classic.pk, "--cliaddr", full.cli, "--", "true").returncode == 0
    want = (f"host {classic.pk} serves no files: it has no SFTP service (a Skywire reference host, "
            "or pty.sftp is off there); exec and start work")
    r = run("cp", f"{classic.pk}:/etc/hostname", str(tmp_path / "x"), "--cliaddr", full.cli)
    assert r.returncode == 1 and want in r.stderr.decode(), r.stderr
    assert not (tmp_path / "x").exists()
    (tmp_path / "mnt").mkdir()
    r = run("fs", "mount", classic.pk, str(tmp_path / "mnt"), "--cliaddr", full.cli)
    assert r.returncode == 1 and want in r.stderr.decode(), r.stderr


@pytest.mark.parametrize("shell", [["bash", "--norc", "-i"], ["sh", "-i"]])
def test_piped_stdin_to_a_shell_on_a_pty_ends_when_stdin_does(net, shell):
    """A host without pty.StartPiped gets piped input on a pty, and our EOF as
    ^D: sent once, it can land before the shell reads its terminal (a
    readline shell then never sees it and the client waits forever, #22)."""
    network, full, classic = net
    r = run("start", "--cliaddr", classic.cli, "--", *shell, input=b"echo x$((40+2))\n", timeout=30)
    assert r.returncode == 0, r.stderr
    assert b"x42" in r.stdout

"""Host names (hosts.toml): the file's format and rewriting rules (units),
and every verb that takes a PK or PK@HOST[:PORT] taking a name instead
(real hosts: A runs the dmsg network, B joins it and whitelists A)."""

import os
import subprocess
import sys

import pytest

from skypty.client import hosts as H
from skypty.keys import generate_keypair
from tests.hosts import CLIENT, Host, env, wait_for


def key():
    return generate_keypair()[0].hex()


K1, K2, K3 = key(), key(), key()


# -- the file (units) ------------------------------------------------------------------------------------

def test_the_file_lives_under_xdg_config_home_or_dot_config():
    assert H.hosts_path({"XDG_CONFIG_HOME": "/x/conf"}) == "/x/conf/skypty/hosts.toml"
    assert H.hosts_path({}) == os.path.join(os.path.expanduser("~"), ".config", "skypty", "hosts.toml")


def test_render_then_parse_is_the_identity():
    hosts = {"web1": H.make_entry("web1", K1, "10.0.0.1:2022", None, ["edge", "web"]),
             "db.eu": H.make_entry("db.eu", K2.upper(), None, "skynet"),
             "v6": H.make_entry("v6", K3, "[::1]:2023", "tcp")}
    text = H.render_hosts(hosts)
    assert H.parse_hosts(text) == hosts
    assert '["db.eu"]' in text and "[web1]" in text  # a dotted name is quoted, not a nested table
    assert hosts["db.eu"].key == K2  # keys are kept in lower case
    assert H.check_rewritable(text, "f") == hosts


@pytest.mark.parametrize("text, message", [
    ('[a]\naddr = "h:1"\n', "host a: no key"),
    (f'[a]\nkey = "{K1}"\nadr = "h:1"\n', "unknown field 'adr'"),
    (f'[a]\nkey = "{K1[:-2]}"\n', "host a: key"),
    (f'[a]\nkey = "{K1}"\ntransport = "tcp"\n', 'transport "tcp" needs an addr'),
    (f'[a]\nkey = "{K1}"\ntransport = "udp"\n', "transport 'udp'"),
    (f'[a]\nkey = "{K1}"\naddr = "h:99999"\n', "bad address"),
    (f'[a]\nkey = "{K1}"\ngroups = "edge"\n', "groups: expected a list"),
    (f'["a:b"]\nkey = "{K1}"\n', "bad name 'a:b'"),
    ('a = 1\n', "'a' is not a [table]"),
    ('[a\n', "is not valid TOML"),
])
def test_a_bad_file_is_one_clear_error(text, message):
    with pytest.raises(H.HostsError) as e:
        H.parse_hosts(text, "hosts.toml")
    assert message in str(e.value) and "\n" not in str(e.value)


def run_client(*args, xdg, cwd=None, input=None, timeout=60):
    e = env()
    e["XDG_CONFIG_HOME"] = str(xdg)
    return subprocess.run(CLIENT + list(args), capture_output=True, env=e, cwd=cwd, input=input, timeout=timeout)


def test_hosts_add_list_remove_write_the_documented_layout(tmp_path):
    r = run_client("hosts", xdg=tmp_path)
    assert r.returncode == 0 and b"no host names yet" in r.stdout
    assert run_client("hosts", "add", "web1", f"{K1}@10.0.0.1:2022", "--group", "edge", xdg=tmp_path).returncode == 0
    assert run_client("hosts", "add", "db", K2, "--transport", "dmsg", xdg=tmp_path).returncode == 0
    path = tmp_path / "skypty" / "hosts.toml"
    assert path.read_text() == H.HEADER + (f'\n[web1]\nkey = "{K1}"\naddr = "10.0.0.1:2022"\ngroups = ["edge"]\n'
                                           f'\n[db]\nkey = "{K2}"\ntransport = "dmsg"\n')
    r = run_client("hosts", "list", xdg=tmp_path)
    assert r.stdout.decode().splitlines()[1].split() == ["web1", K1, "10.0.0.1:2022", "tcp", "edge"]
    assert run_client("hosts", "list", "--names", xdg=tmp_path).stdout == b"web1\ndb\n@edge\n"
    # list is the default: its options work without it
    r = run_client("hosts", "--names", xdg=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"web1\ndb\n@edge\n", b"")
    r = run_client("hosts", "--nope", xdg=tmp_path)
    assert (r.returncode, r.stderr) == (2, b"skypty-client hosts: unrecognized arguments: --nope "
                                           b"(see skypty-client hosts --help)\n")
    r = run_client("hosts", "add", "db", K3, xdg=tmp_path)
    assert (r.returncode, r.stderr.decode()) == (
        1, f"skypty-client: db is already named (key {K2}); --force replaces it\n")
    assert run_client("hosts", "add", "db", K3, "--force", xdg=tmp_path).returncode == 0
    assert run_client("hosts", "remove", "web1", xdg=tmp_path).stdout == b"removed web1\n"
    assert list(H.parse_hosts(path.read_text())) == ["db"]
    r = run_client("hosts", "remove", "web1", xdg=tmp_path)
    assert r.returncode == 1 and b"no host named 'web1'" in r.stderr


def test_a_file_with_comments_of_its_own_is_never_rewritten(tmp_path):
    path = tmp_path / "skypty" / "hosts.toml"
    path.parent.mkdir()
    text = f'# my fleet, do not lose this\n[web1]\nkey = "{K1}"\n'
    path.write_text(text)
    r = run_client("hosts", "add", "web2", K2, xdg=tmp_path)
    assert (r.returncode, r.stderr.decode()) == (
        1, f"skypty-client: refusing to rewrite {path}: line 1 has a comment that this command would lose "
           "(it writes the file in its own layout); edit the file by hand instead\n")
    assert path.read_text() == text
    # ...but names in it work, and a file without comments is rewritten (blank lines aside).
    assert run_client("hosts", "list", "--names", xdg=tmp_path).stdout == b"web1\n"
    path.write_text(f'[web1]\n\n\nkey = "{K1}"\n')
    os.chmod(path, 0o600)
    assert run_client("hosts", "add", "web2", K2, xdg=tmp_path).returncode == 0
    assert list(H.parse_hosts(path.read_text())) == ["web1", "web2"]
    assert os.stat(path).st_mode & 0o777 == 0o600  # the rewrite keeps the file's mode
    assert [p.name for p in path.parent.iterdir()] == ["hosts.toml"]  # no temporary file left


def test_an_unparsable_file_is_refused_and_kept(tmp_path):
    path = tmp_path / "skypty" / "hosts.toml"
    path.parent.mkdir()
    path.write_text("[web1\n")
    r = run_client("hosts", "add", "web2", K2, xdg=tmp_path)
    assert r.returncode == 1 and b"is not valid TOML" in r.stderr
    assert path.read_text() == "[web1\n"


def test_targets_resolve_from_keys_addresses_names_and_groups():
    hosts = {"web1": H.make_entry("web1", K1, "10.0.0.1:2022", None, ["edge"]),
             "web2": H.make_entry("web2", K2, None, "skynet", ["edge", "web"]),
             "db": H.make_entry("db", K3, "10.0.0.3:2022", "dmsg")}
    t = H.resolve_target("web1", hosts=hosts)
    assert (t.pk, t.name, t.host, t.port, t.scheme, t.label) == (K1, "web1", "10.0.0.1", 2022, None, "web1")
    t = H.resolve_target("db", hosts=hosts)  # dmsg preferred although it has an address
    assert (t.direct, t.scheme) == (False, "dmsg")
    t = H.resolve_target(f"{K2}@[::1]:7", hosts=hosts)
    assert (t.host, t.port, t.name, t.label) == ("::1", 7, None, f"{K2[:12]}@[::1]:7")
    assert H.resolve_target(K3, hosts=hosts).label == K3[:12]
    assert [t.label for t in H.expand_targets(["@edge", "web2", "db", "@web"], hosts=hosts)] == ["web1", "web2", "db"]
    with pytest.raises(H.HostsError, match="no host in group 'nope'"):
        H.expand_targets(["@nope"], hosts=hosts)
    with pytest.raises(H.HostsError, match="unknown host 'web9'"):
        H.resolve_target("web9", hosts=hosts)


def test_cp_locations():
    from skypty.client.cp import parse_location

    names = {"web1": H.Target(K1, "web1", "10.0.0.1", 2022)}
    resolve = lambda n: names[n] if n in names else (_ for _ in ()).throw(H.unknown_name(n))  # noqa: E731
    loc = parse_location("web1:/etc/hosts", resolve)
    assert (loc.target.name, loc.path) == ("web1", "/etc/hosts")
    assert parse_location("web1:", resolve).path == "."
    loc = parse_location(f"{K2}:data/x", resolve)
    assert (loc.target.pk, loc.target.direct, loc.path) == (K2, False, "data/x")
    loc = parse_location(f"{K2}@127.0.0.1:2023:/srv/a:b", resolve)
    assert (loc.target.host, loc.target.port, loc.path) == ("127.0.0.1", 2023, "/srv/a:b")
    loc = parse_location(f"{K2}@h.example:/srv", resolve)
    assert (loc.target.host, loc.target.port, loc.path) == ("h.example", 2022, "/srv")
    loc = parse_location(f"{K2}@[::1]:2024:/srv", resolve)
    assert (loc.target.host, loc.target.port, loc.path) == ("::1", 2024, "/srv")
    assert parse_location("./web9:x", resolve).remote is False
    assert parse_location("/tmp/a:b", resolve).remote is False
    with pytest.raises(H.HostsError, match=r"write \./web9:x"):
        parse_location("web9:x", resolve)


def test_completion_offers_names_and_groups(tmp_path):
    """The bash script asks `skypty-client hosts list --names` at completion time."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "skypty-client"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m skypty.client.main \"$@\"\n")
    shim.chmod(0o755)
    assert run_client("hosts", "add", "web1", K1, "--group", "edge", xdg=tmp_path).returncode == 0
    assert run_client("hosts", "add", "web2", K2, xdg=tmp_path).returncode == 0
    script = run_client("completion", "bash", xdg=tmp_path).stdout.decode()

    def complete(*words):
        line = " ".join(words)
        program = (f"{script}\nCOMP_WORDS=(skypty-client {line}); COMP_CWORD={len(words)}\n"
                   "_skypty_client; printf '%s\\n' \"${COMPREPLY[@]}\"")
        e = env()
        e.update(XDG_CONFIG_HOME=str(tmp_path), PATH=f"{bin_dir}:{e['PATH']}")
        r = subprocess.run(["bash", "-c", program], capture_output=True, env=e, timeout=30)
        return sorted(r.stdout.decode().split())

    assert {"web1", "web2", "@edge"} <= set(complete("exec", ""))
    assert complete("exec", "we") == ["web1", "web2"]
    assert complete("shell", "w") == ["web1", "web2"]  # one host: no groups
    assert complete("cp", "we") == ["web1:", "web2:"]
    assert complete("hosts", "remove", "web") == ["web1", "web2"]


def test_an_exec_command_without_dashes_after_a_name_gets_the_hint(tmp_path):
    assert run_client("hosts", "add", "web1", K1, xdg=tmp_path).returncode == 0
    r = run_client("exec", "web1", "uname", "-a", xdg=tmp_path)
    assert (r.returncode, r.stderr.decode()) == (
        2, "skypty-client: put the remote command after --: skypty-client exec web1 -- uname -a\n")


# -- every verb, on real hosts -----------------------------------------------------------------------------

class Net:
    pass


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("names")
    a = Host(tmp, "a").start()
    b = Host(tmp, "b", embedded=False, discovery_port=a.discovery_port)
    b.data["pty"]["whitelist"] = [a.pk]
    b.write_config()
    b.start()
    n = Net()
    n.a, n.b, n.xdg = a, b, tmp / "xdg"
    try:
        for args in (("b-tcp", b.pk, "--addr", f"127.0.0.1:{b.tcp_port}", "--group", "bees"),
                     ("b-dmsg", b.pk, "--addr", f"127.0.0.1:{b.tcp_port}", "--transport", "dmsg", "--group", "bees"),
                     ("b-bare", b.pk)):
            assert n.run("hosts", "add", *args).returncode == 0
        wait_for(lambda: n.run("exec", "b-dmsg", "-i", a.config_path, "--", "true").returncode == 0,
                 timeout=60, what="B to be reachable over dmsg")
        yield n
    finally:
        b.stop()
        a.stop()


def _run(self, *args, **kw):
    return run_client(*args, xdg=self.xdg, cwd=self.a.dir, **kw)


Net.run = _run


def test_exec_takes_a_name_and_keeps_the_single_host_output(net):
    a, b = net.a, net.b
    command = ["--", "sh", "-c", "echo out; echo err >&2; exit 3"]
    by_key = net.run("exec", b.target, "-i", a.config_path, *command)
    assert (by_key.returncode, by_key.stdout, by_key.stderr) == (3, b"out\n", b"err\n")
    for name in ("b-tcp", "b-dmsg", "b-bare"):
        r = net.run("exec", name, "-i", a.config_path, *command)
        assert (r.returncode, r.stdout, r.stderr) == (3, b"out\n", b"err\n"), name
    r = net.run("exec", "b-nope", "-i", a.config_path, "--", "true")
    assert r.returncode == 1 and r.stderr.decode().startswith("skypty-client: unknown host 'b-nope'")


def test_shell_start_and_fs_pipe_take_a_name(net):
    a, b = net.a, net.b
    r = net.run("shell", "b-tcp", "-i", a.config_path, "--", "echo", "shell")
    assert (r.returncode, r.stdout) == (0, b"shell\n")
    r = net.run("shell", "b-bare", "-i", a.config_path, "--", "true")
    assert r.returncode == 1 and b"host b-bare has no addr" in r.stderr
    r = net.run("start", "b-bare", "-T", "-i", a.config_path, "--", "echo", "started", input=b"")
    assert (r.returncode, r.stdout) == (0, b"started\n"), r.stderr
    e = env()
    e["XDG_CONFIG_HOME"] = str(net.xdg)
    pipe = f"{sys.executable} -m skypty.client.main fs pipe b-tcp -i {a.config_path}"
    r = subprocess.run(["sftp", "-b", "-", "-D", pipe], input=f"ls -a {b.dir}\n".encode(), capture_output=True,
                       env=e, timeout=60)
    assert r.returncode == 0 and b"skywire-config.json" in r.stdout, r.stderr


def test_whitelist_verbs_take_names_and_groups(net):
    a, b = net.a, net.b
    r = net.run("whitelist-add", "@bees", "b-bare", "--cliaddr", a.cli)
    assert (r.returncode, r.stdout.decode()) == (0, f"added {b.pk}\n")
    assert b.pk in net.run("whitelist", "--cliaddr", a.cli).stdout.decode()
    r = net.run("whitelist-remove", "b-tcp", "--cliaddr", a.cli)
    assert (r.returncode, r.stdout.decode()) == (0, f"removed {b.pk}\n")


def test_url_takes_a_name(net):
    r = net.run("url", "--visor", "b-bare", "--cliaddr", net.a.cli)
    assert r.returncode == 0 and f"/{net.b.pk}?" in r.stdout.decode()


def test_cp_takes_a_name_directly_and_through_the_local_host(net, tmp_path):
    a, b = net.a, net.b
    src = tmp_path / "f.txt"
    src.write_bytes(b"payload\n")
    for name in ("b-tcp", "b-dmsg"):
        dst = tmp_path / f"{name}.copy"
        assert net.run("cp", "-i", a.config_path, str(src), f"{name}:{dst}.up").returncode == 0
        r = net.run("cp", "-i", a.config_path, f"{name}:{dst}.up", str(dst))
        assert (r.returncode, r.stderr) == (0, b"")
        assert dst.read_bytes() == b"payload\n"


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")
def test_fs_mount_takes_a_name(net, tmp_path):
    pytest.importorskip("llfuse")
    a, b = net.a, net.b
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "hello").write_text("hi\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = net.run("fs", "mount", "b-tcp", str(mnt), "-i", a.config_path, "--remote-root", str(tmp_path / "shared"))
    assert r.returncode == 0, r.stderr
    try:
        assert (mnt / "hello").read_text() == "hi\n"
    finally:
        assert net.run("fs", "umount", str(mnt)).returncode == 0

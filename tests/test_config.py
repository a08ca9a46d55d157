import json
import os

import pytest

from skypty.config import (
    ConfigError, ListenAddress, generate_config_file, load_config, parse_config,
    save_whitelist,
)
from skypty.durations import parse_duration
from skypty.keys import SecretKey

SK = SecretKey.from_hex("9ce6cff4caa53dc4161a73a648750f2c58694448682347b2361428dddbc79d72")
PK = "0272be63f72d86570361da6cc81ea96d47f587a6a433f63393a8a5555361d381d5"
OTHER = "03d85f8b0feb87b29c72f6d2ca0352fe3f4ffbcaa49f7b75f89de8cd2773acd251"
HYPER = "03cc8bca043a941cc14841a4aa34f9af17de7e34f64e822b064da88ae39847c90a"


def visor_config(**pty):
    """A trimmed real-looking Skywire visor config."""
    return {
        "version": "v1.3.28",
        "sk": SK.hex(),
        "pk": PK,
        "dmsg": {"discovery": "http://dmsgd.skywire.skycoin.com", "sessions_count": 1, "servers": []},
        "dmsgpty": {"dmsg_port": 22, "cli_network": "unix", "cli_address": "/tmp/dmsgpty.sock", **pty},
        "skywire-tcp": {"pk_table": None, "listening_address": ":7777"},
        "transport": {"discovery": "http://tpd.skywire.skycoin.com", "log_store": {"type": "file"}},
        "launcher": {"apps": [{"name": "vpn-client", "auto_start": False, "port": 43}]},
        "hypervisors": [HYPER],
        "cli_addr": "localhost:3435",
        "log_level": "info",
    }


def test_legacy_dmsgpty_section_and_unknown_keys():
    config = parse_config(visor_config(whitelist=[OTHER]))
    assert config.pk.hex() == PK
    assert config.pty_key == "dmsgpty"
    assert config.pty.cli_address == "/tmp/dmsgpty.sock"
    assert config.pty.ssh_listen is None and not config.pty.persistent_sessions
    assert [k.hex() for k in config.static_whitelist] == [PK, HYPER, OTHER]
    assert config.dmsg.discovery == "http://dmsgd.skywire.skycoin.com"


def test_defaults_for_a_minimal_config():
    config = parse_config({"sk": SK.hex()})
    assert config.pty.dmsg_port == 22
    assert config.pty.cli_endpoint == "unix:/tmp/pty.sock"
    assert config.pty.session_ttl == 300
    assert config.dmsg.sessions_count == 1 and config.dmsg.embedded is None


def test_pty_section_wins_and_parses_listen_addresses():
    data = visor_config()
    data["pty"] = {"ssh_listen": ":2022", "web_listen": "127.0.0.1:8080", "persistent_sessions": True,
                   "session_ttl": "90s"}
    config = parse_config(data)
    assert config.pty_key == "pty"
    assert config.pty.ssh_listen == ListenAddress("", 2022)
    assert config.pty.ssh_listen.endpoint == "tcp:2022"
    assert config.pty.web_listen.endpoint == "tcp:8080:interface=127.0.0.1"
    assert config.pty.session_ttl == 90
    assert ListenAddress.parse("[::1]:22", "k").endpoint == "tcp:22:interface=\\:\\:1"


@pytest.mark.parametrize("mutate, key", [
    (lambda d: d.update(sk="zz"), "sk:"),
    (lambda d: d.pop("sk"), "sk:"),
    (lambda d: d.update(pk=OTHER), "pk: does not match"),
    (lambda d: d.update(hypervisors=["nothex"]), "hypervisors[0]:"),
    (lambda d: d["dmsgpty"].update(whitelist=[PK, "02"]), "dmsgpty.whitelist[1]:"),
    (lambda d: d["dmsgpty"].update(ssh_listen="2022"), "dmsgpty.ssh_listen:"),
    (lambda d: d["dmsgpty"].update(ssh_listen="host:99999"), "dmsgpty.ssh_listen:"),
    (lambda d: d["dmsgpty"].update(dmsg_port="22"), "dmsgpty.dmsg_port:"),
    (lambda d: d["dmsgpty"].update(dmsg_port=0), "dmsgpty.dmsg_port:"),
    (lambda d: d["dmsgpty"].update(cli_network="udp"), "dmsgpty.cli_network:"),
    (lambda d: d["dmsgpty"].update(persistent_sessions="yes"), "dmsgpty.persistent_sessions:"),
    (lambda d: d["dmsgpty"].update(session_ttl="soon"), "dmsgpty.session_ttl:"),
    (lambda d: d["dmsg"].update(discovery="ftp://x"), "dmsg.discovery:"),
    (lambda d: d["dmsg"].update(sessions_count=0), "dmsg.sessions_count:"),
    (lambda d: d.update(dmsgpty=[]), "dmsgpty:"),
])
def test_bad_values_name_the_key(mutate, key):
    data = visor_config()
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert str(info.value).startswith(key), str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(str(bad))


def test_generated_config_is_private_and_loads(tmp_path):
    path = str(tmp_path / "skywire-config.json")
    config = generate_config_file(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = load_config(path)
    assert again.pk == config.pk and again.dmsg.embedded is not None
    assert again.pty.ssh_listen.port == 2022


def test_save_whitelist_keeps_everything_else(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(visor_config()))
    os.chmod(path, 0o640)
    config = load_config(str(path))
    save_whitelist(str(path), config.pty_key, [parse_config({"sk": SK.hex()}).pk])
    data = json.loads(path.read_text())
    assert data["dmsgpty"]["whitelist"] == [PK]
    assert data["launcher"]["apps"][0]["name"] == "vpn-client"
    assert os.stat(path).st_mode & 0o777 == 0o640


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("5m", 300), ("250ms", 0.25), (12, 12), ("7", 7), ("1h", 3600)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


# -- skypty-client config gen ---------------------------------------------------------

def test_config_gen_options_give_a_host_on_those_ports(tmp_path):
    import socket
    import subprocess
    import sys

    from tests.hosts import CLIENT, env, free_port, wait_for

    ssh, web, disc, srv = (free_port() for _ in range(4))
    cli = str(tmp_path / "gen.sock")
    path = str(tmp_path / "gen.json")
    r = subprocess.run(CLIENT + ["config", "gen", "-o", path, "--ssh-listen", f"127.0.0.1:{ssh}",
                                 "--web-listen", f"127.0.0.1:{web}", "--cli-address", cli, "--dmsg-port", "2222",
                                 "--whitelist", OTHER, "--whitelist", HYPER, "--persistent-sessions",
                                 "--embedded-discovery", f"127.0.0.1:{disc}", "--embedded-server", f"127.0.0.1:{srv}",
                                 "--manhole", str(tmp_path / "manhole.sock")],
                       capture_output=True, env=env(), timeout=30)
    assert r.returncode == 0, r.stderr
    config = load_config(path)
    assert config.pty.manhole == f"unix:{tmp_path / 'manhole.sock'}"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert config.pty.persistent_sessions and config.pty.dmsg_port == 2222
    assert [k.hex() for k in config.pty.whitelist] == [OTHER, HYPER]
    assert config.dmsg.discovery == f"http://127.0.0.1:{disc}"

    log = str(tmp_path / "twistd.log")
    host = subprocess.Popen([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
                             "--pidfile=", "--logfile", log, "skypty", "--config", path],
                            cwd=str(tmp_path), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def listening():
        assert host.poll() is None, host.stderr.read()
        try:
            for port in (ssh, web, disc, srv):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(cli)
            return True
        except OSError:
            return False

    try:
        wait_for(listening, what="the generated host's listeners")
        wait_for(lambda: "dmsg port 2222" in open(log).read(), what="the start line")
        out = subprocess.run(CLIENT + ["whitelist", "-i", path], capture_output=True, env=env(), timeout=30)
        assert OTHER in out.stdout.decode() and HYPER in out.stdout.decode(), out
        # the README's `manhole -i CONFIG` finds the manhole config gen wrote
        out = subprocess.run(CLIENT + ["manhole", "-i", path], input=b"config.pty.dmsg_port\n",
                             capture_output=True, env=env(), timeout=30)
        assert out.returncode == 0 and b"\n2222\n" in out.stdout, out
    finally:
        host.terminate()
        host.wait(15)


@pytest.mark.parametrize("args, complaint", [
    (["--ssh-listen", "2022"], "--ssh-listen"),
    (["--whitelist", "02ab"], "--whitelist"),
    (["--dmsg-port", "0"], "--dmsg-port"),
    (["--discovery", "dmsg.example.org"], "--discovery"),
    (["--network", "prod", "--embedded-server", "0.0.0.0:8081"], "embedded network"),
    (["--manhole", "tcp:6023"], "--manhole"),
])
def test_config_gen_refuses_bad_options_in_one_line(tmp_path, args, complaint):
    import subprocess

    from tests.hosts import CLIENT, env

    path = tmp_path / "x.json"
    r = subprocess.run(CLIENT + ["config", "gen", "-o", str(path)] + args, capture_output=True, env=env(), timeout=30)
    assert r.returncode == 1 and not path.exists()
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and complaint in lines[0], lines


def test_generated_configs_listen_on_this_machine_only(tmp_path):
    """The Noise TCP port of a generated config (config gen, and a first
    start's) is on loopback, like its web terminal: nothing is opened to the
    network until asked (the README's `shell PK@127.0.0.1:2022` still works)."""
    import subprocess

    from skypty.config import generate_config_data
    from tests.hosts import CLIENT, env

    path = tmp_path / "x.json"
    r = subprocess.run(CLIENT + ["config", "gen", "-o", str(path)], capture_output=True, env=env(), timeout=30)
    assert r.returncode == 0, r.stderr
    for pty in (load_config(str(path)).pty, parse_config(generate_config_data(), "first start").pty):
        assert pty.ssh_listen.endpoint == "tcp:2022:interface=127.0.0.1"
        assert pty.web_listen.endpoint == "tcp:8080:interface=127.0.0.1"
        assert pty.manhole == ""


def test_config_gen_networks(tmp_path):
    import subprocess

    from skypty.config import NETWORKS
    from tests.hosts import CLIENT, env

    for name, url in NETWORKS.items():
        path = str(tmp_path / f"{name}.json")
        r = subprocess.run(CLIENT + ["config", "gen", "-o", path, "--network", name], capture_output=True,
                           env=env(), timeout=30)
        assert r.returncode == 0, r.stderr
        config = load_config(path)
        assert config.dmsg.discovery == url and config.dmsg.embedded is None
        pk = subprocess.run(CLIENT + ["config", "pk", "-i", path], capture_output=True, env=env(), timeout=30)
        assert pk.stdout.decode().strip() == config.pk.hex()
    assert NETWORKS == {"prod": "http://dmsgd.skywire.skycoin.com", "test": "http://dmsgd.skywire.dev"}


def test_log_level_is_checked():
    data = visor_config(log_level="loud")
    with pytest.raises(ConfigError, match=r"^dmsgpty.log_level: expected one of debug"):
        parse_config(data)
    assert parse_config(visor_config(log_level="debug")).pty.log_level == "debug"

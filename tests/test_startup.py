"""Start-up failures: one line on stderr naming the setting, and a non-zero
exit, under `twistd -n` and daemonised alike (twistd forks after makeService,
so everything that can fail is checked before that)."""

import json
import os
import socket
import subprocess
import sys

import pytest

from skypty.config import generate_config_data
from tests.hosts import env, free_port, wait_for

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def write_config(directory, **changes):
    data = generate_config_data(cli_address=os.path.join(directory, "pty.sock"),
                                ssh_listen=f"127.0.0.1:{free_port()}", web_listen=f"127.0.0.1:{free_port()}",
                                discovery_port=free_port(), server_port=free_port())
    data["pty"].update(changes)
    path = os.path.join(directory, "skywire-config.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path, data


def run_twistd(directory, config, daemon):
    """-> (exit code, stderr lines, pidfile path) of a start expected to fail."""
    pidfile = os.path.join(directory, "twistd.pid")
    mode = ["--pidfile", pidfile] if daemon else ["-n", "--pidfile="]
    proc = subprocess.run(TWISTD + mode + ["--logfile", os.path.join(directory, "twistd.log"),
                                           "skypty", "--config", config],
                          cwd=directory, env=env(), capture_output=True, timeout=60)
    assert proc.stdout == b""
    return proc.returncode, proc.stderr.decode().splitlines(), pidfile


MODES = pytest.mark.parametrize("daemon", [False, True], ids=["nodaemon", "daemon"])


def assert_one_line(code, lines, pidfile, *needles):
    assert code != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith("skypty: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not os.path.exists(pidfile)  # the daemon never got as far as forking


@MODES
def test_port_in_use(tmp_path, daemon):
    d = str(tmp_path)
    path, data = write_config(d)
    host, port = data["pty"]["ssh_listen"].split(":")
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind((host, int(port)))
        busy.listen()
        code, lines, pidfile = run_twistd(d, path, daemon)
    assert_one_line(code, lines, pidfile, "pty.ssh_listen", data["pty"]["ssh_listen"], "already in use",
                    "choose another port")


@MODES
def test_live_control_socket(tmp_path, daemon):
    d = str(tmp_path)
    path, data = write_config(d)
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(data["pty"]["cli_address"])
        live.listen()
        code, lines, pidfile = run_twistd(d, path, daemon)
    assert_one_line(code, lines, pidfile, "pty.cli_address", data["pty"]["cli_address"],
                    "another host is already listening")


@MODES
def test_bad_config_value(tmp_path, daemon):
    d = str(tmp_path)
    path, _ = write_config(d, persistent_sessions="yes")
    code, lines, pidfile = run_twistd(d, path, daemon)
    assert_one_line(code, lines, pidfile, "pty.persistent_sessions", '"yes"', "true or false")


@MODES
def test_unreadable_config(tmp_path, daemon):
    d = str(tmp_path)
    unreadable = os.path.join(d, "config-dir")
    os.mkdir(unreadable)  # tests run as root, where a mode-000 file is still readable
    code, lines, pidfile = run_twistd(d, unreadable, daemon)
    assert_one_line(code, lines, pidfile, unreadable, "cannot read config")


@MODES
def test_missing_config_directory(tmp_path, daemon):
    d = str(tmp_path)
    typo = os.path.join(d, "no-such-dir", "skywire-config.json")
    code, lines, pidfile = run_twistd(d, typo, daemon)
    assert_one_line(code, lines, pidfile, typo, "does not exist", "fix the --config path")
    assert not os.path.exists(os.path.dirname(typo))


def test_daemonised_host_starts_and_logs_through_the_filter(tmp_path):
    d = str(tmp_path)
    path, data = write_config(d)
    pidfile, logfile = os.path.join(d, "twistd.pid"), os.path.join(d, "twistd.log")
    proc = subprocess.run(TWISTD + ["--pidfile", pidfile, "--logfile", logfile, "skypty", "--config", path],
                          cwd=d, env=env(), capture_output=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    with open(pidfile) as f:
        pid = int(f.read())
    try:
        wait_for(lambda: "started:" in open(logfile).read(), what="the start line")
        log = open(logfile).read()
        assert f"skypty host {data['pk']} started: control unix:{data['pty']['cli_address']}" in log
        assert "Starting factory" not in log and "starting up" not in log
    finally:
        os.kill(pid, 15)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="the daemon to exit")


def test_missing_config_is_created_loudly(tmp_path, capsys):
    from twisted.logger import globalLogPublisher
    from twisted.internet.testing import MemoryReactorClock

    from skypty.host.service import HostService
    from skypty.tap import Options

    path = str(tmp_path / "typo.json")
    options = Options()
    options.parseOptions(["--config", path])
    err = capsys.readouterr().err
    assert os.stat(path).st_mode & 0o777 == 0o600
    pk = options.config.pk.hex()
    assert err.count("\n") == 1 and path in err and pk in err and "NEW identity" in err

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        HostService(options.config, reactor=MemoryReactorClock(), created=options.created).announce()
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [e for e in events if "did not exist" in (e.get("log_format") or "")]
    assert len(warnings) == 1 and warnings[0]["path"] == path and warnings[0]["pk"] == pk


def test_a_listener_failing_after_the_checks_is_one_line_too(capfd):
    """A race (the port taken between the check and the start) ends the same way."""
    from twisted.application import service
    from twisted.internet.error import CannotListenError
    from twisted.internet.testing import MemoryReactorClock

    from skypty.config import parse_config
    from skypty.host.service import HostService, StartupError

    class Busy(service.Service):
        def privilegedStartService(self):
            raise CannotListenError("127.0.0.1", 2022, OSError(98, "Address already in use"))

    config = parse_config({"sk": "9ce6cff4caa53dc4161a73a648750f2c58694448682347b2361428dddbc79d72",
                           "pty": {"cli_address": "/nonexistent/pty.sock"}})
    for foreground, expected in ((True, SystemExit), (False, StartupError)):
        host = HostService(config, reactor=MemoryReactorClock(), foreground=foreground)
        busy = Busy()
        busy.setServiceParent(host)
        host._settings[busy] = ("pty.ssh_listen", "127.0.0.1:2022")
        with pytest.raises(expected) as info:
            host.privilegedStartService()
        # twistd -n: the line goes to the terminal twistd started with (sys.stderr is the log by then)
        if foreground:
            # (the log's critical line goes to stderr too here: logging has not begun in a test)
            message = [line for line in capfd.readouterr().err.splitlines() if line.startswith("skypty:")]
            assert len(message) == 1
            message = message[0]
        else:
            message = str(info.value)
        assert "\n" not in message and "pty.ssh_listen 127.0.0.1:2022: Address already in use" in message


@MODES
def test_live_pidfile(tmp_path, daemon):
    """A second host started in the first one's directory (twistd.pid is taken)."""
    d = str(tmp_path)
    path, _ = write_config(d)
    pidfile = os.path.join(d, "twistd.pid")
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))  # a live process
    mode = ["--pidfile", pidfile] + ([] if daemon else ["-n"])
    proc = subprocess.run(TWISTD + mode + ["skypty", "--config", path], cwd=d, env=env(), capture_output=True,
                          timeout=60)
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, lines
    assert lines[0].startswith(f"skypty: --pidfile {pidfile}: twistd pid {os.getpid()} is running")
    assert open(pidfile).read() == str(os.getpid())


def test_a_failed_first_start_removes_the_config_it_wrote(tmp_path, monkeypatch):
    """The README's first start writes a config with a new identity; when that
    start then fails (a busy port), the new file goes too, so the next try
    does not silently run as the abandoned identity.  An existing config stays."""
    import skypty.config
    from skypty import tap

    generate = skypty.config.generate_config_data
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setattr(skypty.config, "generate_config_data", lambda **kw: generate(
            cli_address=str(tmp_path / "pty.sock"), ssh_listen=f"127.0.0.1:{port}", web_listen="",
            discovery_port=free_port(), server_port=free_port()))
        path = str(tmp_path / "new.json")
        options = tap.Options()
        options.parseOptions(["--config", path])
        assert options.created and os.path.exists(path)
        with pytest.raises(SystemExit) as info:
            tap.makeService(options)
        message = str(info.value)
        assert f"127.0.0.1:{port}: Address already in use" in message
        assert message.endswith(f"(the new config {path} it wrote was removed)") and "\n" not in message
        assert not os.path.exists(path)
        # the same failure with a config that was already there: kept
        options = tap.Options()
        options.parseOptions(["--config", path])  # written again: now it exists before the next start
        options.created = False
        with pytest.raises(SystemExit) as info:
            tap.makeService(options)
        assert "removed" not in str(info.value) and os.path.exists(path)


def test_a_bad_log_level_on_a_first_start_removes_the_config_it_wrote(tmp_path):
    path = str(tmp_path / "new.json")
    proc = subprocess.run(TWISTD + ["-n", "--pidfile=", "skypty", "--config", path, "--log-level", "loud"],
                          cwd=str(tmp_path), env=env(), capture_output=True, timeout=60)
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 1 and lines[-1].startswith("skypty: --log-level: expected one of")
    assert lines[-1].endswith(f"(the new config {path} it wrote was removed)")
    assert not os.path.exists(path)

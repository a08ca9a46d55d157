"""The client tells the truth and behaves like ssh (issue #14): real hosts,
the real client, real terminals (pexpect) where a terminal matters."""

import json
import os
import signal
import subprocess

import pexpect
import pytest

from skypty.keys import generate_keypair
from tests.hosts import CLIENT, Host, env, wait_for

PROMPT = r"\$ |# "
HOME = os.path.realpath(os.environ["HOME"])  # the hosts inherit the test's environment


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    hypervisor, _ = generate_keypair()
    configured, _ = generate_keypair()
    h = Host(tmp_path_factory.mktemp("ux"), extra={"whitelist": [configured.hex()]})
    h.data["hypervisors"] = [hypervisor.hex()]
    h.write_config()
    h.hypervisor, h.configured = hypervisor.hex(), configured.hex()
    h.start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def phost(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("ux-persist"), persistent=True).start()
    yield h
    h.stop()


def spawn(*args):
    return pexpect.spawn(CLIENT[0], CLIENT[1:] + list(args), env=env(), dimensions=(24, 80), timeout=20)


def finished(child):
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def run(*args, stdin=subprocess.DEVNULL, input=None, timeout=60):
    """The client without a terminal: stdin is a pipe or /dev/null, never the test's own."""
    if input is not None:
        stdin = None
    return subprocess.run(CLIENT + list(args), stdin=stdin, input=input, capture_output=True,
                          timeout=timeout, env=env())


# -- interactive verbs behave like ssh ----------------------------------------------------------

def test_typeahead_reaches_the_shell(host):
    child = spawn("shell", "-t", host.target, "-i", host.config_path, "--", "sh")
    child.send("echo ahead-$((40+2))\r")  # typed while the client is still starting and connecting
    child.expect("ahead-42")
    child.sendline("exit")
    assert finished(child) == 0


def test_without_a_tty_stdin_streams_to_the_shell_and_eof_ends_it(host):
    r = run("shell", host.target, "-i", host.config_path, input=b"echo x\nexit 3\n")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"x\n", b"")  # no prompt, no escapes
    r = run("shell", host.target, "-i", host.config_path, stdin=subprocess.DEVNULL, timeout=20)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")


def test_T_streams_a_command_with_separate_stderr(host):
    r = run("shell", "-T", host.target, "-i", host.config_path, "--",
            "sh", "-c", "tr a-z A-Z; echo err >&2; exit 6", input=b"hello\n")
    assert (r.returncode, r.stdout, r.stderr) == (6, b"HELLO\n", b"err\n")


def test_t_forces_a_pty_without_a_terminal(host):
    r = run("shell", "-t", host.target, "-i", host.config_path, "--", "sh", "-c", "test -t 0 && echo on-a-pty")
    assert (r.returncode, r.stdout) == (0, b"on-a-pty\r\n")


def test_exit_status_of_shell_t(host):
    child = spawn("shell", "-t", host.target, "-i", host.config_path, "--", "sh", "-c", "exit 4")
    assert finished(child) == 4


@pytest.mark.parametrize("which", ["host", "phost"])
def test_exit_status_of_start_command_and_of_a_typed_exit(which, request):
    h = request.getfixturevalue(which)  # plain pty.Start, and a persistent session
    child = spawn("start", "--cliaddr", h.cli, "--", "sh", "-c", "exit 4")
    assert finished(child) == 4
    child = spawn("start", "--cliaddr", h.cli, "--", "sh")
    child.expect(PROMPT)
    child.sendline("exit 5")
    assert finished(child) == 5


def test_tilde_dot_disconnects_and_tilde_question_lists_the_escapes(host):
    child = spawn("shell", "-t", host.target, "-i", host.config_path, "--", "sh")
    child.expect(PROMPT)
    child.send("~?")
    child.expect(r"~\.   - disconnect")
    child.send("echo mid~.line\r")  # not at the start of a line: sent as typed
    child.expect("mid~.line")
    child.expect(PROMPT)
    child.send("~.")
    child.expect(rf"disconnected from 127\.0\.0\.1:{host.tcp_port}")
    assert finished(child) == 255
    wait_for(lambda: host.children() == [], what="the remote shell to end with the link")


def test_escape_character_is_configurable_and_can_be_off(host):
    child = spawn("shell", "-t", "-e", "none", host.target, "-i", host.config_path, "--", "sh")
    child.expect(PROMPT)
    child.send("~.\r")  # just text for the shell now
    child.expect("not found")
    child.sendline("exit 3")
    assert finished(child) == 3
    child = spawn("shell", "-t", "-e", "%", host.target, "-i", host.config_path, "--", "sh")
    child.expect(PROMPT)
    child.send("~.\r%.")
    child.expect("disconnected from")
    assert finished(child) == 255


def test_a_single_shell_string_runs_through_the_users_shell(host):
    via = ["--via", "tcp://" + host.target, "-i", host.config_path]
    r = run("exec", host.pk, *via, "--", "echo $HOME | tr a-z A-Z")
    assert (r.returncode, r.stdout) == (0, os.environ["HOME"].upper().encode() + b"\n")
    r = run("exec", host.pk, *via, "--", "echo", "$HOME")  # several words: argv, no shell
    assert (r.returncode, r.stdout) == (0, b"$HOME\n")
    r = run("shell", host.target, "-i", host.config_path, "--", "exit 9")
    assert r.returncode == 9


def test_a_command_without_dashes_gets_a_hint(host):
    r = run("exec", host.pk, "uname", "-a")
    assert (r.returncode, r.stderr.decode()) == (
        2, f"skypty-client: put the remote command after --: skypty-client exec {host.pk} -- uname -a\n")


def test_shells_and_commands_start_in_the_home_directory(host):
    r = run("shell", host.target, "-i", host.config_path, "--", "pwd")
    assert r.stdout.decode().strip() == HOME
    child = spawn("shell", "-t", host.target, "-i", host.config_path, "--", "sh", "-c", "pwd")
    child.expect(HOME)
    assert finished(child) == 0


# -- small things ---------------------------------------------------------------------------------------

def test_control_socket_verbs_read_the_named_config_or_fail(host, tmp_path):
    r = run("whitelist", "-i", str(tmp_path / "missing.json"))
    assert (r.returncode, r.stderr.decode()) == (
        1, f"skypty-client: cannot read config {tmp_path / 'missing.json'}: No such file or directory "
           "(it names the local host's control socket; or give --cliaddr)\n")
    r = run("whitelist", "-i", host.config_path)  # no --cliaddr: the config names the socket
    assert r.returncode == 0 and host.pk.encode() in r.stdout
    r = run("whitelist", "--cliaddr", host.cli, "--sk", "11" * 32)
    assert r.returncode == 2 and r.stderr.startswith(b"skypty-client: --sk has no effect on whitelist")


def test_whitelist_labels_each_key_and_changes_are_told(host):
    pk = generate_keypair()[0].hex()
    r = run("whitelist-add", pk, host.pk, "--cliaddr", host.cli)
    assert (r.returncode, r.stdout.decode()) == (
        0, f"added {pk}\n{host.pk} was already whitelisted (nothing changed)\n")
    r = run("whitelist", "--cliaddr", host.cli)
    assert r.stdout.decode() == (f"{host.pk}  own key\n{host.hypervisor}  hypervisor\n"
                                 f"{host.configured}  config\n{pk}  added at runtime\n")
    r = run("whitelist-remove", pk, "--cliaddr", host.cli)
    assert (r.returncode, r.stdout.decode()) == (0, f"removed {pk}\n")
    r = run("whitelist-remove", pk, "--cliaddr", host.cli)
    assert (r.returncode, r.stdout.decode()) == (0, f"{pk} was not on the whitelist (nothing to remove)\n")


def test_sessions_header_and_the_reattach_line(phost, tmp_path):
    out = open(tmp_path / "out", "wb")
    first = subprocess.Popen(CLIENT + ["start", "-t", "--cliaddr", phost.cli, "--", "sh", "-c",
                                       "echo hello-replay; sleep 60"],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, env=env())
    out.close()
    wait_for(lambda: b"hello-replay" in (tmp_path / "out").read_bytes(), what="the session's output")
    first.kill()  # the link drops: the session is detached, not ended
    first.wait()
    sid = first.stderr.read().decode().split("session ")[1].split(";")[0]
    r = run("list", "--sessions", "--cliaddr", phost.cli)
    lines = r.stdout.decode().splitlines()
    assert lines[0].split() == ["ID", "OWNER", "STATE", "COMMAND"]
    assert any(line.startswith(sid) for line in lines[1:])
    child = spawn("start", "--attach", sid, "--cliaddr", phost.cli)
    child.expect(rf"\[skypty: reattached session {sid} \(14 bytes replayed\)\]")
    child.expect("hello-replay")
    child.sendcontrol("c")  # ends sleep, and with it the session's shell: 128+SIGINT
    assert finished(child) == 130


# -- one line per error, exact -------------------------------------------------------------------------

def test_refused_key_over_tcp_names_both_keys(host):
    pk, sk = generate_keypair()
    r = run("shell", host.target, "--sk", sk.hex(), "--", "true")
    assert (r.returncode, r.stderr.decode()) == (
        1, f"skypty-client: not authorized: host {host.pk} does not whitelist your key {pk.hex()} "
           f"(on that host: skypty-client whitelist-add {pk.hex()})\n")


def test_feature_missing_on_the_host(host, phost):
    r = run("list", "--sessions", "--cliaddr", host.cli)
    assert (r.returncode, r.stderr.decode()) == (
        1, "skypty-client: this host keeps no persistent sessions (pty.persistent_sessions is off in "
           "its config), so there are none to list\n")
    r = run("start", "--attach", "0123456789abcdef", "--cliaddr", host.cli)
    assert (r.returncode, r.stderr.decode()) == (
        1, "skypty-client: cannot reattach 0123456789abcdef: this host keeps no persistent sessions "
           "(pty.persistent_sessions is off); start a new shell without --attach\n")
    r = run("start", "--attach", "0123456789abcdef", "--cliaddr", phost.cli)
    assert (r.returncode, r.stderr.decode()) == (
        1, "skypty-client: no session 0123456789abcdef on the host: it has ended, or was reaped after "
           "its idle time (skypty-client list --sessions shows the live ones)\n")


# -- the web terminal starts at the browser's size ------------------------------------------------------

def _web_shell_size(host, query, first_message=None):
    """Open the web terminal's WebSocket, have the new shell run `stty size`."""
    import re
    import time

    import websocket

    with open(host.config_path + ".web-token") as f:
        token = f.read().strip()
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{host.web_port}/pty?token={token}&commands=stty%20size{query}",
        origin=f"http://127.0.0.1:{host.web_port}", timeout=5)
    deadline = time.monotonic() + 20
    try:
        if first_message:
            ws.send(json.dumps(first_message))
        seen = b""
        while time.monotonic() < deadline:
            frame = ws.recv()
            if isinstance(frame, bytes):
                seen += frame
                m = re.search(rb"(?<![\d;])(\d+) (\d+)\r\n", seen)
                if m:
                    return int(m.group(1)), int(m.group(2))
        raise AssertionError(f"no `stty size` answer; the terminal shows {seen!r}")
    finally:
        ws.close()


@pytest.fixture
def sh_host(tmp_path, monkeypatch):
    monkeypatch.setenv("SHELL", "/bin/sh")  # the web terminal starts the default shell: no ~/.bashrc
    h = Host(tmp_path).start()
    yield h
    h.stop()


def test_web_terminal_starts_at_the_browsers_size(sh_host):
    assert _web_shell_size(sh_host, "&rows=41&cols=123") == (41, 123)
    assert _web_shell_size(sh_host, "", {"type": "resize", "rows": 33, "cols": 111}) == (33, 111)


# -- over dmsg: the local host says why it could not reach the peer -------------------------------------

@pytest.fixture(scope="module")
def net(tmp_path_factory):
    from tests.test_dmsg_e2e import DmsgNetwork, dmsg_host

    tmp = tmp_path_factory.mktemp("ux-dmsg")
    network = DmsgNetwork(tmp).start()
    a = dmsg_host(tmp, "a", network)
    b = dmsg_host(tmp, "b", network, whitelist=[a.pk])
    gone = dmsg_host(tmp, "gone", network, whitelist=[a.pk])
    hosts = (a, b, gone)
    for h in hosts:
        h.start()
    wait_for(lambda: all(network.joined(h) for h in hosts), what="the hosts to join dmsg")
    gone.stop()  # its discovery entry stays behind: a stopped peer
    yield network, a, b, gone
    for h in (a, b):
        h.stop()
    network.stop()


def test_unknown_peer_is_not_in_discovery(net):
    network, a, b, gone = net
    ghost = generate_keypair()[0].hex()
    r = run("exec", ghost, "--cliaddr", a.cli, "--", "true")
    assert (r.returncode, r.stderr.decode()) == (
        1, f"skypty-client: host {ghost} is not in dmsg discovery: it is offline or has never run "
           "(check the key)\n")


def test_stopped_peer_did_not_answer(net):
    network, a, b, gone = net
    r = run("exec", gone.pk, "--cliaddr", a.cli, "--", "true")
    assert (r.returncode, r.stderr.decode()) == (
        1, f"skypty-client: host {gone.pk} did not answer over dmsg (it stopped, or lost its dmsg "
           "session)\n")


def test_refusal_over_dmsg_names_both_keys(net):
    network, a, b, gone = net
    r = run("exec", a.pk, "--cliaddr", b.cli, "--", "true")  # a does not whitelist b
    assert (r.returncode, r.stderr.decode()) == (
        1, f"skypty-client: not authorized: host {a.pk} does not whitelist your key {b.pk} "
           f"(on that host: skypty-client whitelist-add {b.pk})\n")


def test_exit_status_through_the_proxy(net):
    network, a, b, gone = net
    child = spawn("start", b.pk, "--cliaddr", a.cli, "--", "sh", "-c", "exit 6")
    assert finished(child) == 6

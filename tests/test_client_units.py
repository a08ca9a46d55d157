"""The client's pure pieces: escape filter, command-line rule, exec trailer,
the local host's reasons."""

import os

import pytest

from skypty.client.classic import Ready, TrailerParser, wrapper_script
from skypty.client.cmdline import needs_shell, remote_argv
from skypty.client.errors import explain_rpc, proxy_refusal
from skypty.wire.requestline import encode_rejection, parse_rejection
from skypty.client.escape import DISCONNECT, SHOW_HELP, EscapeFilter, parse_escape_char

A, B = "02" + "a" * 64, "03" + "b" * 64


# -- escape -----------------------------------------------------------------------------

def test_escape_only_at_the_start_of_a_line():
    f = EscapeFilter(b"~")
    assert f.feed(b"~.") == (b"", [DISCONNECT])
    f = EscapeFilter(b"~")
    assert f.feed(b"ls ~.x\r") == (b"ls ~.x\r", [])
    assert f.feed(b"~") == (b"", [])  # held: may start an escape
    assert f.feed(b".") == (b"", [DISCONNECT])


def test_escape_help_double_and_other_characters():
    f = EscapeFilter(b"~")
    assert f.feed(b"~?") == (b"", [SHOW_HELP])
    assert f.feed(b"~~x") == (b"~x", [])
    f = EscapeFilter(b"~")
    assert f.feed(b"~a\n~b") == (b"~a\n~b", [])
    assert f.feed(b"\n~.tail") == (b"\n", [DISCONNECT])  # nothing after ~. is sent


def test_escape_off_and_other_characters():
    assert EscapeFilter(None).feed(b"~.") == (b"~.", [])
    assert parse_escape_char("none") is None
    assert parse_escape_char("^]") == b"\x1d"
    assert parse_escape_char("%") == b"%"
    f = EscapeFilter(b"%")
    assert f.feed(b"~.%.\r%.") == (b"~.%.\r", [DISCONNECT])
    with pytest.raises(ValueError):
        parse_escape_char("ab")


# -- the command-line rule -----------------------------------------------------------------------

def test_one_word_with_shell_syntax_goes_through_the_shell():
    assert needs_shell(["echo $HOME | tr a-z A-Z"])
    assert needs_shell(["exit 3"])
    assert not needs_shell(["uname"])
    assert not needs_shell(["/usr/bin/id"])
    assert not needs_shell(["echo", "$HOME"])  # several words: an argv
    argv = remote_argv(["echo $HOME"])
    assert argv[:2] == ["sh", "-c"] and argv[-1] == "echo $HOME"
    assert remote_argv(["ls", "-l", "a b"]) == ["ls", "-l", "a b"]


# -- the exec trailer -------------------------------------------------------------------------------

def test_trailer_is_stripped_and_its_status_read_across_chunks():
    marker = b"<skypty-exit-0123>"
    p = TrailerParser(marker)
    data = b"hello\n<sky" + b"pty-exit-0123>4" + b"2\n"
    out = b"".join(p.feed(data[i:i + 3]) for i in range(0, len(data), 3))
    assert (out, p.status) == (b"hello\n", 42)
    assert p.feed(b"after") == b""


def test_trailer_passes_look_alikes_and_keeps_output_without_a_trailer():
    marker = b"<skypty-exit-0123>"
    p = TrailerParser(marker)
    out = p.feed(b"a <skypty-exit-01 b") + p.feed(b"<skypty-exit") + p.finish()
    assert (out, p.status) == (b"a <skypty-exit-01 b<skypty-exit", None)


def test_ready_line_and_wrapper():
    r = Ready(b"<r>")
    assert r.feed(b"<") == b"" and r.feed(b"r>\nrest") == b"rest" and r.seen
    script = wrapper_script(b"<m>", b"<r>", 10)
    assert "head -c 10 | \"$@\"" in script and "stty raw -echo" in script
    assert "</dev/null" in wrapper_script(b"<m>")


# -- the local host's reasons --------------------------------------------------------------------------

def test_reason_behind_the_reject_byte():
    text = f"not-whitelisted: not authorized: host {A} does not whitelist {B}".encode()
    reason, rest = parse_rejection(bytes((len(text),)) + text)
    assert reason == "not-whitelisted"
    assert proxy_refusal(reason, rest, A, 22) == (
        f"not authorized: host {A} does not whitelist your key {B} (on that host: skypty-client whitelist-add {B})")
    assert parse_rejection(b"") == ("", "")
    sent = encode_rejection("no-sftp", "é" * 200)  # what a host sends: cut to 255 bytes, still parsed
    assert sent[:1] == b"\x01" and len(sent) == 2 + 255
    assert parse_rejection(sent[1:])[0] == "no-sftp"
    # the reject byte alone: a reference or older host; a hang-up: a failure (or a reference host)
    assert "without saying why (a reference or an older host)" in proxy_refusal("", "", A, 22)
    hung_up = proxy_refusal("", "", A, 22, closed=True)
    assert "hung up without a reason" in hung_up and "older" not in hung_up and "its log" in hung_up
    failed = proxy_refusal("failed", "No module named 'skypty.host.proxy'", A, 22)
    assert failed == (f"the local host failed while reaching {A}: No module named 'skypty.host.proxy' "
                      "(its log has the details)")
    assert "not in dmsg discovery" in proxy_refusal("not-in-discovery", "", A, 22)
    assert "dmsg port 22" in proxy_refusal("refused", "", A, 22)


def test_rpc_errors_are_translated():
    # a reference host has no such feature: no setting of ours to blame (issue #22)
    reference = explain_rpc("rpc: can't find method pty.Sessions")
    assert "does not offer persistent sessions" in reference and "persistent_sessions" not in reference
    assert "cannot reattach abc: this host does not offer" in explain_rpc("rpc: can't find method pty.Attach", "abc")
    # a skypty host with the feature switched off says so, and the setting is named
    assert "pty.persistent_sessions is off" in explain_rpc("dmsgpty: persistent sessions are off on this host")
    assert "cannot reattach abc" in explain_rpc("dmsgpty: persistent sessions are off on this host", "abc")
    assert "no session abc" in explain_rpc("dmsgpty: session not found", "abc")
    assert "does not offer `list`" in explain_rpc("rpc: can't find service host.Peers")
    assert explain_rpc("EOF") is None


def test_a_visors_reasons_get_their_own_lines():
    assert proxy_refusal("unreachable", "skynet: no route; dmsg: offline", A, 22) == (
        f"host {A} is unreachable from the local host: skynet: no route; dmsg: offline")
    assert "did not answer in time" in proxy_refusal("timeout", "no answer within 5s", A, 22)
    assert proxy_refusal("scheme-unavailable", "skynet is not available: no visor", A, 22) == (
        "--scheme: skynet is not available: no visor")


def test_channels_wait_on_fds_past_selects_limit():
    # select() refuses fds >= 1024; a fleet exec or a benchmark holding many
    # sockets gets there.
    import resource
    import socket

    from skypty.client.transport import wait_for_fd

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2100:
        raise AssertionError(f"this test needs RLIMIT_NOFILE >= 2100, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2100), hard))
    a, b = socket.socketpair()
    high = os.dup2(a.fileno(), 2000)
    try:
        sock = socket.socket(fileno=high)
        assert not wait_for_fd(sock, 0.01)
        b.send(b"x")
        assert wait_for_fd(sock, 5)
        assert wait_for_fd(sock, 5, for_write=True)
        sock.detach()
    finally:
        os.close(high)
        a.close()
        b.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("argv, line", [
    (["exec", "--bogus", A, "--", "true"], "skypty-client exec: unrecognized option --bogus (see skypty-client exec --help)\n"),
    (["shell", "--nope", f"{A}@h", "--", "ls"], "skypty-client shell: unrecognized option --nope (see skypty-client shell --help)\n"),
    (["exec", A, "uname", "-a"], f"skypty-client: put the remote command after --: skypty-client exec {A} -- uname -a\n"),
    # a malformed --sk is a usage error, on the fast exec path and through argparse alike
    (["exec", A, "--sk", "00", "--via", f"{A}@127.0.0.1:1", "--", "true"],
     "skypty-client: --sk: secret key must be 64 hex characters, got 2\n"),
    (["shell", f"{A}@127.0.0.1:1", "--sk", "zz", "--", "true"],
     "skypty-client: --sk: secret key must be 64 hex characters, got 2\n"),
])
def test_usage_errors_say_what_is_wrong(argv, line, capsys):
    from skypty.client.main import _main

    assert _main(argv) == 2
    assert capsys.readouterr().err == line


def test_session_table_names_a_login_shell():
    from skypty.client.commands import session_table
    from skypty.wire import types as T

    rows = [T.SessionInfo.cls(id="5f0c2e8d9a1b7c33", owner=A, command="", attached=True, idle_seconds=0),
            T.SessionInfo.cls(id="0123456789abcdef", owner=B, command="sleep 60", attached=False,
                              idle_seconds=7)]
    assert session_table(rows) == [
        "ID                OWNER              STATE        COMMAND",
        f"5f0c2e8d9a1b7c33  {A[:16]}…  attached     (login shell)",
        f"0123456789abcdef  {B[:16]}…  idle 7s      sleep 60",
    ]
    assert session_table([]) == ["no sessions"]

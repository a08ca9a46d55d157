"""Garbage at every entry point of a live host: it stays up and keeps serving."""

import os
import random
import socket
import stat
import subprocess
import sys

import pytest

from skypty.client.rpc import request_service
from skypty.client.transport import connect_unix
from skypty.wire import requestline
from tests.hosts import CLIENT, Host, env, wait_for


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("hostile")).start()
    yield h
    h.stop()


def blast(connect, payloads):
    for payload in payloads:
        s = connect()
        try:
            s.settimeout(0.3)
            # The host may cut a garbage sender off mid-send (a reset): that is
            # its right, so any socket error here just ends this attempt.
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except OSError:
            pass
        finally:
            s.close()


def payloads(seed):
    rnd = random.Random(seed)
    out = [b"", b"\x00", b"\xff" * 70000, os.urandom(4096)]
    out += [rnd.randbytes(rnd.randint(1, 2000)) for _ in range(8)]
    out += [requestline.encode_request("dmsgpty/pty") + rnd.randbytes(rnd.randint(1, 3000)) for _ in range(5)]
    out += [requestline.encode_request("dmsgpty/whitelist") + b"\xfc\xff\xff\xff\xff" + os.urandom(100)]
    out += [b"\xff" + b"a" * 255 + b"rest", b"\x05abc"]
    return out


def test_garbage_everywhere_then_the_host_still_serves(host):
    before = len(host.children())
    blast(lambda: _unix(host.cli), payloads(1))
    blast(lambda: socket.create_connection(("127.0.0.1", host.tcp_port)), payloads(2))
    blast(lambda: socket.create_connection(("127.0.0.1", host.web_port)), payloads(3))
    blast(lambda: socket.create_connection(("127.0.0.1", host.server_port)), payloads(4))
    blast(lambda: socket.create_connection(("127.0.0.1", host.discovery_port)), payloads(5))
    assert host.proc.poll() is None
    r = host.client("shell", host.target, "-i", host.config_path, "--", "echo", "alive")
    assert (r.returncode, r.stdout) == (0, b"alive\n")
    channel = connect_unix(host.cli)
    request_service(channel, requestline.WHITELIST)
    channel.close()
    assert len(host.children()) <= before
    assert "Unhandled" not in host.log() and "Traceback" not in host.log()


def _unix(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    return s


# -- a host that lies to cp (tests/hostile_sftp.py serves the lies) ------------------------------------

PEAK_RSS = 150 * 2**20  # the client's whole peak, Python and Twisted included (~48 MB measured)
ADDRESS_SPACE = 768 * 2**20  # a runaway client fails here instead of eating the shared machine


@pytest.fixture
def liar(tmp_path_factory):
    """-> start(scenario): a lying local host on a control socket; its socket
    path (outside the test's tmp_path, which holds only what cp writes)."""
    procs, home = [], tmp_path_factory.mktemp("liar")

    def start(scenario, outside="/nonexistent"):
        sock = str(home / f"{scenario}.sock")
        procs.append(subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "hostile_sftp.py"),
                                       sock, scenario, outside]))
        wait_for(lambda: os.path.exists(sock), timeout=30, what="the lying host")
        return sock
    yield start
    for p in procs:
        p.kill()
        p.wait()


LIAR_PK = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"  # any key (G): the liar asks none


def cp_from_liar(sock, src, dst, *options, timeout=60, stderr_path=None):
    """Run cp -r against the liar -> (exit code, stderr bytes, peak RSS in bytes, seconds)."""
    import resource
    import threading
    import time

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    err_path = stderr_path or os.path.join(os.path.dirname(sock), "cp.err")
    started = time.monotonic()
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(CLIENT + ["cp", "-r", "--cliaddr", sock, *options, f"{LIAR_PK}:{src}", str(dst)],
                                env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=cap_memory)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        # The peak is the client's own mm's high-water mark (VmHWM), sampled
        # until it exits: a fork's ru_maxrss also counts the pytest process it
        # was forked from (hundreds of MiB late in a full run), exec or not.
        peak, done = [0], threading.Event()

        def sample():
            while not done.is_set():
                try:
                    with open(f"/proc/{proc.pid}/status") as status_file:
                        for line in status_file:
                            if line.startswith("VmHWM:"):
                                peak[0] = max(peak[0], int(line.split()[1]) * 1024)
                except OSError:
                    pass
                done.wait(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            proc.wait()
        finally:
            killer.cancel()
            done.set()
            sampler.join()
    with open(err_path, "rb") as f:
        return proc.returncode, f.read(), peak[0], time.monotonic() - started


def tree_of(root, skip):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[path] = (st.st_mode, open(path, "rb").read() if stat.S_ISREG(st.st_mode) else None)
    return out


def test_cp_writes_nothing_outside_its_destination_whatever_the_host_lists(liar, tmp_path):
    """../../x, an absolute name, ../../d, lnk -> OUTSIDE then lnk/through,
    then lnk again as a directory: each refused, named, and nothing outside DST changes."""
    outside, dst = tmp_path / "outside", tmp_path / "a" / "b"
    outside.mkdir()
    dst.mkdir(parents=True)
    (tmp_path / "a" / "x").write_bytes(b"precious\n")
    sock = liar("traversal", str(outside))
    before = tree_of(tmp_path, str(dst))
    code, err, _, _ = cp_from_liar(sock, "/t", dst)
    assert tree_of(tmp_path, str(dst)) == before, err
    assert code == 1
    lines = err.decode().splitlines()
    for name in ("../../x", f"{outside}/abs", "../../d", "lnk/through"):
        assert (f"skypty-client: cp: /t: refused the name '{name}' from the host's listing: not a plain "
                "file name (it could reach outside the destination)") in lines
    assert f"skypty-client: cp: {dst}/t/lnk: a symbolic link is in the way (not followed)" in lines
    assert (dst / "t" / "ok").read_bytes() == b"the host wrote this\n"  # the honest entry still arrives
    assert os.readlink(dst / "t" / "lnk") == str(outside)  # a symlink is copied as one, never entered
    # a link and then a name through it, nothing in between
    code, err, _, _ = cp_from_liar(sock, "/u", dst)
    assert code == 1 and tree_of(tmp_path, str(dst)) == before, err
    assert not os.path.lexists(outside / "through")


def test_cp_stops_an_endless_tree_at_max_depth_in_bounded_memory(liar, tmp_path):
    sock = liar("endless")
    code, err, rss, seconds = cp_from_liar(sock, "/e", tmp_path)
    deepest = "/e" + "/d" * 65
    assert (code, err.decode()) == (1, f"skypty-client: cp: {deepest}: more than 64 levels below the source: "
                                       "not copied (--max-depth N allows more)\n")
    assert rss < PEAK_RSS, f"peak RSS {rss / 2**20:.0f} MiB"
    made = tmp_path / "e" / os.path.join(*["d"] * 64)
    assert made.is_dir() and not (made / "d").exists()
    code, err, _, _ = cp_from_liar(sock, "/e", tmp_path / "e", "--max-depth", "3")
    assert code == 1 and b"/e/d/d/d/d: more than 3 levels" in err


def test_cp_stops_a_huge_directory_at_max_entries_in_bounded_memory(liar, tmp_path):
    """1,000,000 entries with 210-byte names (sockets: skipped with a warning each)."""
    sock = liar("huge")
    code, err, rss, seconds = cp_from_liar(sock, "/h", tmp_path, timeout=120)
    lines = err.decode().splitlines()
    assert code == 1
    assert lines[-1] == ("skypty-client: cp: /h: more than 100000 entries: the rest is not copied "
                         "(--max-entries N allows more)")
    assert len(lines) == 100_001 and lines[0].endswith(": not a regular file, directory or symlink (skipped)")
    assert "Traceback" not in err.decode()
    assert rss < PEAK_RSS, f"peak RSS {rss / 2**20:.0f} MiB"


def test_host_text_reaches_the_terminal_escaped(liar, tmp_path):
    """Names and SFTP error texts with ESC/BEL: shown as \\x1b, never sent raw;
    a non-ASCII error text is shown, not a hang until --timeout."""
    sock = liar("escapes")
    code, err, _, seconds = cp_from_liar(sock, "/s", tmp_path, "--timeout", "20s")
    assert code == 1
    assert b"\x1b" not in err and b"\x07" not in err
    text = err.decode()
    assert r"refused the name '\x1b]0;pwned\x07\x1b[2J/x'" in text
    assert r"skypty-client: cp: /s/\x1b[32mgreen: not a regular file, directory or symlink (skipped)" in text
    assert r"skypty-client: cp: /s/bad: \x1b[2J\x1b[31mfake error\x1b[0m" in text
    assert "skypty-client: cp: /s/utf: Zugriff verweigert \u2013 \u00fc" in text
    assert seconds < 15


# -- every print point of host text (in-process, the host's answers faked) ---------------------------

EVIL = "\x1b[2J\x1b]0;owned\x07\x1b[31mfake\x9b\x7f\r\n"
SHOWN = r"\x1b[2J\x1b]0;owned\x07\x1b[31mfake\x9b\x7f\x0d\x0a"


class _LyingRPC:
    def __init__(self, *args):
        pass

    def call(self, method, *args):
        from skypty.keys import SecretKey
        from skypty.wire import types as T
        from skypty.wire.rpc import RPCError

        if method == "pty.Sessions":
            return [T.SessionInfo.cls(id=EVIL, owner=EVIL * 3, command=EVIL, attached=0, idle_seconds=3)]
        if method == "host.WebURL":
            return f"http://127.0.0.1:8080/pty?token={EVIL}"
        if method == "whitelist.Sources":
            return [T.WhitelistEntry.cls(pk=SecretKey(b"\x01" * 32).public_key, source=EVIL)]
        raise RPCError(EVIL)


def test_list_whitelist_and_rpc_errors_print_the_hosts_words_escaped(monkeypatch, capsys):
    from skypty.client import commands
    from skypty.client.main import main

    monkeypatch.setattr(commands, "open_control", lambda args, uri: (None, b""))
    monkeypatch.setattr(commands, "BlockingRPC", _LyingRPC)
    monkeypatch.setattr(commands, "_whitelist_rpc", lambda args, verb="": _LyingRPC())
    for argv, code in ((["list", "--sessions"], 0), (["whitelist"], 0), (["list"], 1), (["url"], 1), (["ui"], 1)):
        assert main(argv) == code
        out, err = capsys.readouterr()
        assert "\x1b" not in out + err and "\x07" not in out + err and "\x9b" not in out + err, argv
        assert SHOWN in out + err, (argv, out, err)
    assert main(["list", "--sessions"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 2 and rows[1].endswith(f"{'idle 3s':<12} {SHOWN}")  # still one row, COMMAND last


def test_fleet_error_lines_escape_the_hosts_words():
    from skypty.client import fleet
    from skypty.client.hosts import Target

    result = fleet.HostResult(Target("02" + "ab" * 32, text="web1"), error=EVIL)
    assert fleet.notices(result) == f"skypty-client: {SHOWN}\n".encode()
    table = fleet.summary([result])
    assert "\x1b" not in table and SHOWN in table and len(table.splitlines()) == 3


def test_shell_notices_escape_the_hosts_words(capsys):
    """Not the terminal stream (byte-exact): the client's own [skypty: ...] lines."""
    from skypty.client import interactive

    interactive._say(f"session ended: {EVIL}")
    err = capsys.readouterr().err
    assert err == f"\r\n[skypty: session ended: {SHOWN}]\r\n"


def test_fs_mount_shows_a_lying_listing_without_the_names_that_are_paths(liar, tmp_path):
    """The kernel refuses a dirent with '/' (and then the whole directory,
    EIO): the mount leaves such names out and shows the rest."""
    pytest.importorskip("llfuse")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    from tests.test_fs_mount import mount_processes, mounted

    sock, mnt = liar("traversal", str(tmp_path / "outside")), tmp_path / "mnt"
    mnt.mkdir()
    run = lambda *argv: subprocess.run(CLIENT + list(argv), env=env(), capture_output=True, timeout=60)  # noqa: E731
    r = run("fs", "mount", LIAR_PK, str(mnt), "--cliaddr", sock, "--log", str(tmp_path / "mount.log"))
    assert r.returncode == 0, r.stderr
    try:
        assert sorted(os.listdir(mnt / "t")) == ["lnk", "ok"]  # lnk twice in the listing: one name
        assert sorted(os.listdir(mnt / "u")) == ["lnk"]
    finally:
        if mounted(mnt):
            run("fs", "umount", str(mnt))
        wait_for(lambda: not mount_processes(mnt), timeout=15, what="the mount process to exit")


def test_fs_mount_refuses_a_listing_without_end(monkeypatch):
    """The mount holds a listing whole (it caches it): a host that never says
    EOF gets EIO past skypty.fs.link.MAX_LISTING entries, not all memory."""
    import contextlib

    from twisted.internet import defer

    from skypty.fs import link

    class Endless:
        reads = 0

        def read(self):
            Endless.reads += 1
            assert Endless.reads < 10_000, "still listing"
            return defer.succeed([(b"n%d" % Endless.reads, b"", {})] * 100)

        def close(self):
            return defer.succeed(None)

    class Link:
        connected = True

        def call(self, request):
            return defer.maybeDeferred(request, self)

        def corked(self):
            return contextlib.nullcontext()

        def openDirectory(self, path):
            return defer.succeed(Endless())

    monkeypatch.setattr(link, "MAX_LISTING", 5_000)
    failures = []
    link.RemoteFS(Link()).listdir(b"/endless").addErrback(failures.append)
    assert failures and failures[0].check(OSError) and "more than 5000 entries" in str(failures[0].value)
    assert Endless.reads <= 5_000 // 100 + 2


def test_cp_holds_one_reply_per_level_at_worst(liar, tmp_path):
    """The walk's worst case: an endless tree with a full reply (4,096 entries,
    210-byte names, ~1 MiB) at every level, its first entry the way down.
    What stays held is each level's reply as bytes, not as Python objects
    (212 MB of peak RSS before that, 110 MB after)."""
    sock = liar("wide")
    code, err, rss, seconds = cp_from_liar(sock, "/e", tmp_path, timeout=120)
    assert code == 1 and b"more than 64 levels below the source" in err
    assert err.count(b"(skipped)\n") == 65 * 4095
    assert rss < PEAK_RSS, f"peak RSS {rss / 2**20:.0f} MiB"

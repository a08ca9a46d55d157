"""skypty-client cp: the pure pieces (paths, progress, the pipelined pump),
then real copies: a tree with a 50 MB file and 500 small files both ways,
byte for byte with modes and times; interrupted copies never leave a partial
file under the final name."""

import hashlib
import os
import signal
import stat
import subprocess
import sys

import pexpect
import pytest
from twisted.internet import defer

from skypty.client import cp as C
from tests.hosts import CLIENT, Host, env, wait_for

BIG = 50 * 1000 * 1000


# -- pure pieces -------------------------------------------------------------------------------------

def test_progress_line_shows_percentage_bytes_rate_and_eta():
    line = C.progress_line(done=64 * 2**20, total=256 * 2**20, elapsed=1.0, rate=64e6, width=80)
    assert line.startswith(" 25% [") and line.endswith("64.0 MiB/256.0 MiB    64.0 MB/s  ETA 0:03")
    assert len(line) <= 79
    assert C.progress_line(0, 0, 0.0, 0.0).startswith("100% [")  # empty files only
    assert "ETA --:--" in C.progress_line(1, 10, 0.1, 0.0)


def test_rate_is_over_the_last_seconds():
    r = C.Rate(span=2.0)
    for t, b in ((0, 0), (1, 100), (2, 200), (3, 1200), (4, 2200)):
        r.add(t, b)
    assert r.value() == 1000.0


def test_modes_without_and_with_preserve():
    assert C.final_mode(stat.S_IFREG | 0o4777, preserve=False, umask=0o022) == 0o755
    assert C.final_mode(stat.S_IFREG | 0o4755, preserve=True, umask=0o077) == 0o4755


def test_temporary_names_are_hidden_and_fit_name_max():
    assert C.temp_name("data.bin", "0a1b2c3d") == ".data.bin.skypty-0a1b2c3d.part"
    assert len(C.temp_name("x" * 255, "0a1b2c3d")) <= 255
    for name in ("\U0001f600" * 63, "\u00e9" * 127):  # 252 and 254 bytes: a host's long name fits too
        assert len(os.fsencode(C.temp_name(name, "0a1b2c3d"))) <= 255


def test_sources_and_destination_must_have_exactly_one_remote_side():
    from skypty.client.errors import ClientError
    from skypty.keys import generate_keypair

    pk = generate_keypair()[0].hex()
    sources, dst = C.split_paths(["a", "b", f"{pk}:/x"])
    assert [s.path for s in sources] == ["a", "b"] and dst.remote
    for words in (["a", "b"], [f"{pk}:/a", f"{pk}:/b"], ["a", f"{pk}:/a", "b"], ["a"]):
        with pytest.raises(ClientError) as e:
            C.split_paths(words)
        assert e.value.code == 2


class FakeReader:
    """Answers later (like the network), short when asked to."""

    def __init__(self, data, short=False):
        self.data, self.short, self.pending = data, short, []

    def read(self, offset, length):
        if self.short:
            length = max(1, length // 3)
        d = defer.Deferred()
        self.pending.append((d, self.data[offset:offset + length]))
        return d

    def answer_all(self):
        while self.pending:
            d, data = self.pending.pop(0)
            d.callback(data)


class FakeWriter:
    def __init__(self):
        self.buf = bytearray()

    def write(self, offset, data):
        if len(self.buf) < offset + len(data):
            self.buf.extend(b"\0" * (offset + len(data) - len(self.buf)))
        self.buf[offset:offset + len(data)] = data
        return defer.succeed(None)


def test_pump_keeps_a_window_in_flight_and_asks_again_after_short_reads():
    data = os.urandom(1000)
    for short in (False, True):
        reader, writer, counted = FakeReader(data, short), FakeWriter(), []
        done = C.pump(reader, writer, len(data), counted.append, lambda: False, window=300, chunk=100)
        assert len(reader.pending) == 3  # 300 bytes of window, 100 a request
        while reader.pending:
            reader.answer_all()
        assert done.called and bytes(writer.buf) == data and sum(counted) == 1000


def test_pump_stops_on_request_and_reports_the_first_error():
    data = os.urandom(1000)
    reader, stop = FakeReader(data), {"now": False}
    done = C.pump(reader, FakeWriter(), len(data), lambda n: None, lambda: stop["now"], window=300, chunk=100)
    stop["now"] = True
    reader.answer_all()
    failures = []
    done.addErrback(failures.append)
    assert failures and failures[0].check(C.Interrupted)
    reader = FakeReader(data[:150])  # the file shrank under us
    done = C.pump(reader, FakeWriter(), len(data), lambda n: None, lambda: False, window=300, chunk=100)
    while reader.pending:
        reader.answer_all()
    failures = []
    done.addErrback(failures.append)
    assert failures and "got shorter" in str(failures[0].value)


# -- real copies ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("cp"), "a").start()
    yield h
    h.stop()


def cp(host, *args, timeout=180):
    return subprocess.run(CLIENT + ["cp", "-i", host.config_path] + list(args), capture_output=True, env=env(),
                          cwd=host.dir, timeout=timeout)


def remote(host, path):
    return f"{host.target}:{path}"


def make_tree(root):
    """A 50 MB file, 500 small files in nested directories, odd modes,
    a read-only directory, a symlink, an empty file."""
    os.makedirs(root / "many" / "deeper")
    with open(root / "big.bin", "wb") as f:
        f.write(os.urandom(BIG))
    for i in range(500):
        sub = root / "many" / ("deeper" if i % 5 == 0 else "")
        (sub / f"f{i:03d}").write_bytes(os.urandom(i * 37 % 4000))
        os.chmod(sub / f"f{i:03d}", (0o600, 0o644, 0o755, 0o444, 0o750)[i % 5])
    (root / "empty").write_bytes(b"")
    os.symlink("big.bin", root / "link")
    os.makedirs(root / "locked")
    (root / "locked" / "inside").write_bytes(b"x")
    os.chmod(root / "locked", 0o555)
    os.utime(root / "big.bin", (1_600_000_000, 1_600_000_000))
    os.chmod(root / "many", 0o750)


def snapshot(root):
    """{relative path: (mode, mtime, content hash or link target)}."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                what = "-> " + os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                what = "dir"
            else:
                with open(path, "rb") as f:
                    what = hashlib.sha256(f.read()).hexdigest()
            mtime = int(st.st_mtime) if not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode) else None
            out[os.path.relpath(path, root)] = (stat.S_IMODE(st.st_mode), mtime, what)
    return out


def test_a_tree_round_trips_byte_exact_with_modes_and_times(host, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    try:
        before = snapshot(src)
        assert len(before) == 507  # 502 files, a link, 3 directories, the file in locked/
        r = cp(host, "-r", "-p", str(src), remote(host, str(tmp_path / "up")))
        assert (r.returncode, r.stderr) == (0, b"")  # stderr is no terminal: no progress bar
        assert snapshot(tmp_path / "up") == before
        r = cp(host, "-r", "-p", remote(host, str(tmp_path / "up")), str(tmp_path / "down"))
        assert (r.returncode, r.stderr) == (0, b"")
        assert snapshot(tmp_path / "down") == before
        leftovers = [n for d, _, fs in os.walk(tmp_path) for n in fs if ".skypty-" in n]
        assert leftovers == []
        # into an existing directory: SRC's name inside it, merged on a second run
        r = cp(host, "-r", "-p", remote(host, str(tmp_path / "up" / "many")), str(tmp_path / "down"))
        assert r.returncode == 0 and snapshot(tmp_path / "down") == before
    finally:
        for d in ("src", "up", "down"):
            if (tmp_path / d / "locked").exists():
                os.chmod(tmp_path / d / "locked", 0o755)


def test_without_p_modes_follow_the_umask_and_times_are_new(host, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"data")
    os.chmod(src, 0o777)
    os.utime(src, (1_600_000_000, 1_600_000_000))
    umask = os.umask(0o022)
    os.umask(umask)
    assert cp(host, str(src), remote(host, str(tmp_path / "up"))).returncode == 0
    assert cp(host, remote(host, str(tmp_path / "up")), str(tmp_path / "down")).returncode == 0
    for copy in ("up", "down"):
        st = os.stat(tmp_path / copy)
        assert stat.S_IMODE(st.st_mode) == 0o777 & ~umask and int(st.st_mtime) != 1_600_000_000


def test_mistakes_are_one_line_each(host, tmp_path):
    r = cp(host, remote(host, str(tmp_path / "nope")), str(tmp_path / "x"))
    assert (r.returncode, r.stderr.decode()) == (
        1, f"skypty-client: cp: {tmp_path / 'nope'}: No such file or directory\n")
    (tmp_path / "d").mkdir()
    r = cp(host, str(tmp_path / "d"), remote(host, str(tmp_path / "x")))
    assert (r.returncode, r.stderr.decode()) == (
        1, f"skypty-client: cp: {tmp_path / 'd'}: is a directory (not copied; use -r)\n")
    r = cp(host, str(tmp_path / "d"), str(tmp_path / "x"))
    assert r.returncode == 2 and b"one side must be a host" in r.stderr
    (tmp_path / "f").write_bytes(b"x")
    r = cp(host, str(tmp_path / "f"), remote(host, str(tmp_path / "no" / "dir" / "f")))
    assert (r.returncode, r.stderr.decode()) == (
        1, f"skypty-client: cp: {tmp_path / 'no' / 'dir' / 'f'}: No such file or directory\n")
    r = cp(host, "web9:/x", str(tmp_path / "x"))
    assert r.returncode == 1 and b"unknown host 'web9'" in r.stderr
    r = subprocess.run(CLIENT + ["cp", "--no-visor-key", str(tmp_path / "d"), remote(host, "/tmp/")],
                       capture_output=True, env=env(), timeout=60)
    assert r.returncode == 1 and b"does not whitelist your key" in r.stderr


def sparse(path, size):
    with open(path, "wb") as f:
        f.truncate(size)


def temp_files(directory):
    return [n for n in os.listdir(directory) if ".skypty-" in n]


def growing_temp(directory):
    """True once a temporary file holds some bytes (the copy is under way)."""
    for name in temp_files(directory):
        try:
            if os.path.getsize(os.path.join(directory, name)) > 1024 * 1024:
                return True
        except FileNotFoundError:
            pass
    return False


@pytest.mark.parametrize("direction", ["download", "upload"])
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_an_interrupted_copy_never_leaves_a_partial_file_under_the_final_name(host, tmp_path, direction, how):
    src, dst_dir = tmp_path / "src.bin", tmp_path / "dst"
    dst_dir.mkdir()
    sparse(src, 1024 * 2**20)  # 1 GiB of zeros: takes seconds, costs no disk
    final = dst_dir / "src.bin"
    final.write_bytes(b"the complete old version\n")
    args = [str(src), remote(host, str(dst_dir))] if direction == "upload" else \
        [remote(host, str(src)), str(dst_dir)]
    proc = subprocess.Popen(CLIENT + ["cp", "-i", host.config_path] + args, env=env(), cwd=host.dir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: growing_temp(dst_dir), timeout=60, what="the copy to be under way")
        proc.send_signal(how)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert final.read_bytes() == b"the complete old version\n"
    if how == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL  # nothing could clean up: the temp file may stay
    else:
        assert (proc.returncode, err) == (128 + how, b"")
        assert temp_files(dst_dir) == []  # and cleaned up after itself


def test_a_progress_bar_only_on_a_terminal(host, tmp_path):
    src = tmp_path / "f.bin"
    sparse(src, 64 * 2**20)
    child = pexpect.spawn(CLIENT[0], CLIENT[1:] + ["cp", "-i", host.config_path, str(src),
                                                     remote(host, str(tmp_path / "g.bin"))],
                          env=env(), cwd=host.dir, timeout=60)
    child.expect(r"\d+% \[[#.]+\] ")
    child.expect(r"copied 64\.0 MiB in \d+\.\ds \(\d+\.\d MB/s\)")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert os.path.getsize(tmp_path / "g.bin") == 64 * 2**20
    r = cp(host, "-q", str(src), remote(host, str(tmp_path / "h.bin")))
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")


def test_the_client_imports_twisted_for_cp_only():
    code = ("import sys; from skypty.client import main, hosts, fleet; "
            "print('twisted' in ' '.join(sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env(), timeout=60)
    assert r.stdout == b"False\n", r.stderr


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_special_files_in_a_tree_are_skipped_with_a_warning_and_exit_0(host, tmp_path, direction):
    """As the guide says (issue #26: a FIFO made cp -r exit 1)."""
    src = tmp_path / "tree"
    src.mkdir()
    (src / "file").write_bytes(b"data")
    os.mkfifo(src / "fifo")
    dst = tmp_path / "copy"
    args = [str(src), remote(host, str(dst))] if direction == "upload" else [remote(host, str(src)), str(dst)]
    r = cp(host, "-r", *args)
    assert (r.returncode, r.stderr.decode()) == (
        0, f"skypty-client: cp: {src / 'fifo'}: not a regular file, directory or symlink (skipped)\n")
    assert (dst / "file").read_bytes() == b"data" and not os.path.lexists(dst / "fifo")


def test_a_listing_name_must_be_one_plain_name():
    for bad in ("", ".", "..", "a/b", "../x", "/abs", "x/", "nul\0byte"):
        with pytest.raises(C.UnsafeName) as e:
            C.check_name(bad)
        assert e.value.name == bad
    for good in ("a", "...", ".hidden", "a b", "\x1b[2J", "caf\udce9", "x" * 300):
        assert C.check_name(good) == good


def test_host_text_is_escaped_but_printable_text_kept():
    from skypty.client.textsafe import safe

    assert safe("plain name, ü, 日本") == "plain name, ü, 日本"
    assert safe("\x1b[2J\x1b]0;t\x07\r\n\t\x7f\x9b") == r"\x1b[2J\x1b]0;t\x07\x0d\x0a\x09\x7f\x9b"
    assert safe("a\u202egnp.exe") == r"a\u202egnp.exe"  # bidi override
    assert safe(b"caf\xe9 \x1b") == r"caf\xe9 \x1b"  # not UTF-8: the byte, escaped
    assert safe("lone \ud800") == r"lone \ud800"
    assert safe(RuntimeError("boom\x1b")) == r"boom\x1b"


def test_max_entries_counts_the_entries_not_dot_and_dot_dot(tmp_path):
    """OpenSSH lists . and ..: a directory of exactly N files fits --max-entries N."""
    import io

    from tests.fuzz.test_cp_names import DIR, FILE, LyingSource, _NoProgress

    listing = [(".", DIR, []), ("a", FILE, []), ("..", DIR, []), ("b", FILE, []), ("c", FILE, [])]
    err = io.StringIO()
    for limit, failures in ((3, 0), (2, 1)):
        dst = tmp_path / f"limit{limit}"
        dst.mkdir()
        copier = C.Copier(LyingSource(listing, "/nonexistent"), C.LocalSide(), preserve=False, recursive=True,
                          progress=_NoProgress(), err=err, max_entries=limit)
        done = copier.copy(["/src"], str(dst))
        assert done.called and copier.failures == failures, err.getvalue()
        assert sorted(os.listdir(dst / "src")) == ["a", "b", "c"][:limit]
    assert err.getvalue() == ("skypty-client: cp: /src: more than 2 entries: the rest is not copied "
                              "(--max-entries N allows more)\n")

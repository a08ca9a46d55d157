"""`skypty-client fs mount` for real: a FUSE mount of a host's files on
loopback, compared with the same operations on a local directory."""

import errno
import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.fsmatrix import exercise, tree
from tests.hosts import Host, free_port, wait_for
from tests.relay import Relay

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")

SFTP_SERVER = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                                "/usr/lib/sftp-server") if os.path.exists(p)), None)


def mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == os.path.realpath(path) for line in f)


def mount_processes(mountpoint):
    """pids of `fs mount` processes serving *mountpoint*."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"mount" in argv and os.fsencode(str(mountpoint)) in argv:
                found.append(int(entry))
    return found


class Mounted:
    def __init__(self, host, mountpoint):
        self.host, self.mountpoint = host, mountpoint

    def mount(self, *args):
        os.makedirs(self.mountpoint, exist_ok=True)
        r = self.host.client("fs", "mount", *args, str(self.mountpoint), "-i", self.host.config_path,
                             "--log", str(self.mountpoint) + ".log")
        assert r.returncode == 0, r.stderr.decode()
        assert mounted(self.mountpoint)
        return self

    def umount(self):
        if mounted(self.mountpoint):
            r = self.host.client("fs", "umount", str(self.mountpoint))
            assert r.returncode == 0, r.stderr.decode()
        wait_for(lambda: not mount_processes(self.mountpoint), timeout=15, what="the mount process to exit")


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fs")
    shared = tmp / "shared"
    shared.mkdir()
    h = Host(tmp, "fs", extra={"sftp": {"root": str(shared)}}).start()
    h.shared = shared
    yield h
    h.stop()


@pytest.fixture
def workdir(host, request):
    """A fresh directory on the host, and its path inside the share."""
    name = request.node.name.replace("[", "_").replace("]", "_")
    path = host.shared / name
    path.mkdir()
    yield path, "/" + name
    shutil.rmtree(path, ignore_errors=True)


def test_file_operation_matrix_matches_a_local_directory(host, workdir, tmp_path):
    remote_dir, remote_name = workdir
    local = tmp_path / "local"
    local.mkdir()
    m = Mounted(host, tmp_path / "mnt").mount(host.target, "--remote-root", remote_name)
    try:
        expected = exercise(str(local))
        got = exercise(str(m.mountpoint))
        assert got == expected
        assert tree(str(m.mountpoint)) == tree(str(local))
    finally:
        m.umount()
    assert tree(str(remote_dir)) == tree(str(local))  # and it really is on the host


@pytest.mark.skipif(SFTP_SERVER is None, reason="needs OpenSSH's sftp-server")
def test_mounting_a_tree_served_by_openssh_sftp_server(host, tmp_path):
    served, local = tmp_path / "served", tmp_path / "local"
    served.mkdir()
    local.mkdir()
    m = Mounted(host, tmp_path / "mnt").mount("--sftp-command", SFTP_SERVER, "--remote-root", str(served),
                                                  "openssh")
    try:
        assert exercise(str(m.mountpoint)) == exercise(str(local))
        assert tree(str(m.mountpoint)) == tree(str(local))
        st = os.statvfs(m.mountpoint)  # statvfs@openssh.com
        assert st.f_blocks == os.statvfs(served).f_blocks
    finally:
        m.umount()
    assert tree(str(served)) == tree(str(local))


def test_read_only_mount(host, workdir, tmp_path):
    remote_dir, remote_name = workdir
    (remote_dir / "kept.txt").write_text("kept\n")
    m = Mounted(host, tmp_path / "mnt").mount(host.target, "--remote-root", remote_name, "--ro")
    try:
        assert (m.mountpoint / "kept.txt").read_text() == "kept\n"
        for attempt in (lambda: (m.mountpoint / "new.txt").write_text("x"),
                        lambda: os.unlink(m.mountpoint / "kept.txt"),
                        lambda: os.mkdir(m.mountpoint / "d"),
                        lambda: os.chmod(m.mountpoint / "kept.txt", 0o600)):
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno == errno.EROFS
    finally:
        m.umount()
    assert sorted(os.listdir(remote_dir)) == ["kept.txt"]


def test_a_dropped_link_gives_eio_and_the_mount_recovers(host, workdir, tmp_path):
    remote_dir, remote_name = workdir
    (remote_dir / "one.txt").write_text("one\n")
    (remote_dir / "two.txt").write_text("two\n")
    relay = Relay(("127.0.0.1", free_port()), ("127.0.0.1", host.tcp_port))
    target = f"{host.pk}@127.0.0.1:{relay.path[1]}"
    m = Mounted(host, tmp_path / "mnt").mount(target, "--remote-root", remote_name, "--attr-ttl", "0",
                                              "--entry-ttl", "0", "--timeout", "5s")
    try:
        held = open(m.mountpoint / "one.txt", "rb")  # stays open across the drop
        assert held.read() == b"one\n"
        relay.close_listener()
        relay.cut()
        started = time.monotonic()
        with pytest.raises(OSError) as e:
            (m.mountpoint / "two.txt").read_text()
        assert e.value.errno == errno.EIO
        assert time.monotonic() - started < 5, "a dropped link must fail fast, not hang"
        relay.open()

        def readable():
            try:
                return (m.mountpoint / "two.txt").read_text() == "two\n"
            except OSError as e:
                assert e.errno == errno.EIO
                return False
        wait_for(readable, timeout=15, what="the mount to recover")
        held.seek(0)
        assert held.read() == b"one\n"  # the open file was reopened on the new session
        held.close()
        (m.mountpoint / "three.txt").write_text("three\n")
        assert (remote_dir / "three.txt").read_text() == "three\n"
    finally:
        m.umount()
        relay.shutdown()


def test_umount_ends_the_mount_process_and_refuses_what_is_not_ours(host, workdir, tmp_path):
    _, remote_name = workdir
    m = Mounted(host, tmp_path / "mnt").mount(host.target, "--remote-root", remote_name)
    assert mount_processes(m.mountpoint)
    busy = subprocess.Popen(["sleep", "60"], cwd=str(m.mountpoint))
    try:
        r = host.client("fs", "umount", str(m.mountpoint))
        assert r.returncode == 1 and b"busy" in r.stderr.lower()
        assert mounted(m.mountpoint)
    finally:
        busy.kill()
        busy.wait()
    m.umount()
    assert not mounted(m.mountpoint) and not mount_processes(m.mountpoint)
    r = host.client("fs", "umount", str(m.mountpoint))
    assert r.returncode == 1 and b"not mounted" in r.stderr
    r = host.client("fs", "umount", "/proc")
    assert r.returncode == 1 and b"not skypty's" in r.stderr


def test_mount_failures_are_one_clear_line(host, tmp_path):
    from skypty.keys import generate_keypair

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    _, stranger = generate_keypair()
    r = host.client("fs", "mount", host.target, str(mnt), "--sk", stranger.hex())
    assert r.returncode == 1 and b"not authorized" in r.stderr and r.stderr.count(b"\n") == 1
    r = host.client("fs", "mount", host.target, str(mnt), "-i", host.config_path, "--remote-root", "/nope")
    assert r.returncode == 1 and b"does not exist" in r.stderr
    r = host.client("fs", "mount", f"{host.pk}@127.0.0.1:{free_port()}", str(mnt), "-i", host.config_path)
    assert r.returncode == 1 and b"refused" in r.stderr
    r = host.client("fs", "mount", host.target, str(tmp_path / "missing"), "-i", host.config_path)
    assert r.returncode == 1 and b"not a directory" in r.stderr
    r = host.client("fs", "mount", "--sftp-command", "no-such-sftp-server", "x", str(mnt))
    assert r.returncode == 1 and r.stderr == b"skypty-client: --sftp-command: no-such-sftp-server: command not found\n"
    assert not mounted(mnt) and not mount_processes(mnt)


def test_foreground_mount_unmounts_on_sigterm(host, workdir, tmp_path):
    from tests.hosts import CLIENT, env

    remote_dir, remote_name = workdir
    (remote_dir / "f.txt").write_text("f\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(CLIENT + ["fs", "mount", host.target, str(mnt), "-i", host.config_path,
                                      "--remote-root", remote_name, "--foreground"],
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: mounted(mnt), timeout=15, what="the foreground mount")
        assert (mnt / "f.txt").read_text() == "f\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert not mounted(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)])


def test_hard_links_and_df(host, workdir, tmp_path):
    remote_dir, remote_name = workdir
    m = Mounted(host, tmp_path / "mnt").mount(host.target, "--remote-root", remote_name)
    try:
        (m.mountpoint / "orig").write_text("same\n")
        os.link(m.mountpoint / "orig", m.mountpoint / "alias")
        assert (m.mountpoint / "alias").read_text() == "same\n"
        assert os.stat(remote_dir / "orig").st_ino == os.stat(remote_dir / "alias").st_ino
        assert os.statvfs(m.mountpoint).f_blocks == os.statvfs(remote_dir).f_blocks  # statvfs@openssh.com
    finally:
        m.umount()


def test_listings_have_dot_and_dot_dot(host, workdir, tmp_path):
    remote_dir, remote_name = workdir
    (remote_dir / "sub").mkdir()
    (remote_dir / "sub" / "f").write_text("x")
    m = Mounted(host, tmp_path / "mnt").mount(host.target, "--remote-root", remote_name)
    try:
        for directory, names in ((m.mountpoint, [".", "..", "sub"]), (m.mountpoint / "sub", [".", "..", "f"])):
            r = subprocess.run(["ls", "-a1i", str(directory)], capture_output=True, timeout=30)
            listed = dict(reversed(line.split()) for line in r.stdout.decode().splitlines())
            assert r.returncode == 0 and sorted(listed) == names, r
        # "." is the directory itself, ".." its parent (the root's parent: the root)
        r = subprocess.run(["ls", "-a1i", str(m.mountpoint / "sub")], capture_output=True, timeout=30)
        inodes = dict(reversed(line.split()) for line in r.stdout.decode().splitlines())
        assert int(inodes["."]) == os.stat(m.mountpoint / "sub").st_ino
        assert int(inodes[".."]) == os.stat(m.mountpoint).st_ino
    finally:
        m.umount()

"""The host's SFTP service, driven by OpenSSH's own sftp client."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.hosts import Host, env

SFTP = shutil.which("sftp")


def run_sftp(host, batch, tmp_path):
    if SFTP is None:
        pytest.fail("OpenSSH's sftp client must be installed (scripts/install-test-deps does it)")
    script = tmp_path / "batch"
    script.write_text(batch)
    pipe = f"{sys.executable} -m skypty.client.main fs pipe {host.target} -i {host.config_path}"
    return subprocess.run([SFTP, "-b", str(script), "-D", pipe], capture_output=True, timeout=60, env=env(),
                          cwd=str(tmp_path))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sftp")
    root = tmp / "shared"
    root.mkdir()
    (root / "hello.txt").write_text("hello from the host\n")
    h = Host(tmp, "rw", extra={"sftp": {"root": str(root)}}).start()
    ro = Host(tmp, "ro", extra={"sftp": {"root": str(root), "read_only": True}}).start()
    yield h, ro, root
    h.stop()
    ro.stop()


def test_openssh_sftp_client_file_operations(shared, tmp_path):
    host, _, root = shared
    big = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "big.bin").write_bytes(big)
    batch = ("ls /\nget /hello.txt got.txt\nput big.bin /up.bin\nmkdir /d\nrename /up.bin /d/moved.bin\n"
             "chmod 600 /d/moved.bin\nsymlink /d/moved.bin /link\nrm /hello.txt\n")
    r = run_sftp(host, batch, tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "got.txt").read_text() == "hello from the host\n"
    assert (root / "d" / "moved.bin").read_bytes() == big
    assert os.stat(root / "d" / "moved.bin").st_mode & 0o777 == 0o600
    assert os.path.islink(root / "link")
    assert not (root / "hello.txt").exists()


def test_paths_cannot_leave_the_shared_root(shared, tmp_path):
    host, _, root = shared
    r = run_sftp(host, "get /../../../../etc/hostname escaped\n", tmp_path)
    assert r.returncode != 0 and not (tmp_path / "escaped").exists()


def test_read_only_share_refuses_changes(shared, tmp_path):
    _, ro, root = shared
    (tmp_path / "x").write_text("x")
    r = run_sftp(ro, "put x /x\n", tmp_path)
    assert r.returncode != 0 and b"ermission denied" in r.stderr
    assert not (root / "x").exists()
    r = run_sftp(ro, "ls /\n", tmp_path)
    assert r.returncode == 0


def test_strangers_get_no_sftp(shared, tmp_path):
    host, _, _ = shared
    from skypty.keys import generate_keypair

    _, sk = generate_keypair()
    r = host.client("fs", "pipe", host.target, "--sk", sk.hex(), input=b"")
    assert r.returncode == 1 and b"not authorized" in r.stderr


def test_hostile_packets_are_bounded(tmp_path):
    """A declared 2 GiB packet is refused before it is buffered; a read asks
    for at most MAX_READ bytes whatever the peer requests."""
    import struct

    from twisted.internet.testing import StringTransport

    from skypty.host.sftp import MAX_READ, ConfinedSFTPServer, make_sftp_protocol
    from skypty.config import SftpConfig

    proto = make_sftp_protocol(None, SftpConfig(root=str(tmp_path)))
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(struct.pack("!LB", 2**31, 1) + b"x" * 1000)
    assert transport.disconnecting and proto.buf == b""

    (tmp_path / "big").write_bytes(b"z" * (MAX_READ * 3))
    server = ConfinedSFTPServer(str(tmp_path))
    f = server.openFile(b"/big", 1, {})
    try:
        assert len(f.readChunk(0, 2**31)) == MAX_READ
    finally:
        f.close()


def test_links_are_served_as_links(tmp_path):
    """lstat/readlink/remove act on the link itself; targets stay verbatim."""
    from skypty.host.sftp import ConfinedSFTPServer

    (tmp_path / "target.txt").write_text("t")
    server = ConfinedSFTPServer(str(tmp_path))
    server.makeLink(b"target.txt", b"/rel")  # OpenSSH order: target first
    assert os.readlink(tmp_path / "rel") == "target.txt"
    assert server.readLink(b"/rel") == "target.txt"
    import stat

    assert stat.S_ISLNK(server.getAttrs(b"/rel", 0)["permissions"])
    assert stat.S_ISREG(server.getAttrs(b"/rel", 1)["permissions"])
    server.removeFile(b"/rel")
    assert (tmp_path / "target.txt").exists() and not os.path.lexists(tmp_path / "rel")
    os.symlink("/etc/hostname", tmp_path / "escape")
    with pytest.raises(Exception):
        server.openFile(b"/escape", 1, {})  # following it would leave the root


def test_packets_split_anywhere_or_batched_get_the_same_answers(tmp_path):
    """The server cuts packets itself: a request stream fed one byte at a
    time and the same stream in one piece give byte-identical replies, and a
    WRITE lands exactly (the direct WRITE/READ/STAT paths included)."""
    import struct

    from twisted.conch.ssh import filetransfer as fx
    from twisted.conch.ssh.common import NS
    from twisted.internet.testing import StringTransport

    from skypty.config import SftpConfig
    from skypty.host.sftp import make_sftp_protocol

    def packet(kind, request_id, body):
        return struct.pack("!LBL", len(body) + 5, kind, request_id) + body

    payload = bytes(range(256)) * 300

    def session(name, split):
        proto = make_sftp_protocol(None, SftpConfig(root=str(tmp_path)))
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(struct.pack("!LBL", 5, fx.FXP_INIT, 3) + packet(
            fx.FXP_OPEN, 1, NS(name) + struct.pack("!LL", fx.FXF_WRITE | fx.FXF_CREAT | fx.FXF_READ, 0)))
        opened = transport.value()
        version_length = struct.unpack_from("!L", opened)[0]
        length, kind, _, size = struct.unpack_from("!LBLL", opened, 4 + version_length)
        assert kind == fx.FXP_HANDLE
        handle = opened[4 + version_length + 13:][:size]
        requests = (packet(fx.FXP_WRITE, 2, NS(handle) + struct.pack("!Q", 10) + NS(payload))
                    + packet(fx.FXP_READ, 4, NS(handle) + struct.pack("!QL", 10, len(payload)))
                    + packet(fx.FXP_FSTAT, 5, NS(handle))
                    + packet(fx.FXP_LSTAT, 6, NS(name))
                    + packet(fx.FXP_STAT, 7, NS(b"/missing"))
                    + packet(fx.FXP_WRITE, 8, NS(b"no-such-handle") + struct.pack("!Q", 0) + NS(b"x")))
        if split:
            for i in range(len(requests)):
                proto.dataReceived(requests[i:i + 1])
        else:
            proto.dataReceived(requests)
        return transport.value()[len(opened):]

    def replies(stream):
        """[(type, body)], an ATTRS body without its times (the two files
        need not be written in the same second)."""
        out, pos = [], 0
        while pos < len(stream):
            length, kind = struct.unpack_from("!LB", stream, pos)
            body = stream[pos + 5:pos + 4 + length]
            out.append((kind, body[:-8] if kind == fx.FXP_ATTRS else body))
            pos += 4 + length
        assert pos == len(stream)
        return out

    whole, split = session(b"/a", False), session(b"/b", True)
    for name in ("a", "b"):
        assert (tmp_path / name).read_bytes() == b"\0" * 10 + payload
    assert replies(split) == replies(whole)
    kinds = [kind for kind, _ in replies(whole)]
    assert kinds == [fx.FXP_STATUS, fx.FXP_DATA, fx.FXP_ATTRS, fx.FXP_ATTRS, fx.FXP_STATUS, fx.FXP_STATUS]
    assert payload in whole  # the READ gave back what the WRITE put there

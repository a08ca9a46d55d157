"""One file-operation workload, run on a local directory and on a mount;
the two transcripts (and the trees left behind) must be equal."""

import errno
import hashlib
import os
import random
import stat


def _try(transcript, label, fn, *args):
    try:
        result = fn(*args)
    except OSError as e:
        transcript.append((label, "error", errno.errorcode.get(e.errno, e.errno)))
        return None
    transcript.append((label, "ok", result))
    return result


def _read(path, mode="rb"):
    with open(path, mode) as f:
        return f.read()


def _write(path, data, mode="wb"):
    with open(path, mode) as f:
        f.write(data)
    return len(data)


def exercise(root, seed=7):
    """The workload; -> transcript (list of tuples)."""
    rng = random.Random(seed)
    t = []
    p = lambda *parts: os.path.join(root, *parts)  # noqa: E731

    # create, write, read back, append, overwrite in place
    t.append(("write", _write(p("a.txt"), b"hello\n")))
    t.append(("read", _read(p("a.txt"))))
    t.append(("append", _write(p("a.txt"), b"world\n", "ab")))
    with open(p("a.txt"), "r+b") as f:
        f.seek(2)
        f.write(b"LL")
    t.append(("patched", _read(p("a.txt"))))
    t.append(("size", os.stat(p("a.txt")).st_size))

    # truncate, both ways
    os.truncate(p("a.txt"), 4)
    t.append(("truncated", _read(p("a.txt"))))
    os.truncate(p("a.txt"), 10)
    t.append(("extended", _read(p("a.txt"))))

    # rename, also over an existing file
    _write(p("b.txt"), b"bbb")
    os.rename(p("a.txt"), p("c.txt"))
    t.append(("renamed", sorted(os.listdir(root))))
    os.rename(p("b.txt"), p("c.txt"))
    t.append(("replaced", _read(p("c.txt")), sorted(os.listdir(root))))

    # chmod and times
    os.chmod(p("c.txt"), 0o640)
    t.append(("mode", stat.S_IMODE(os.stat(p("c.txt")).st_mode)))
    os.utime(p("c.txt"), (1_600_000_000, 1_700_000_000))
    st = os.stat(p("c.txt"))
    t.append(("times", int(st.st_atime), int(st.st_mtime)))

    # symlinks, relative and dangling
    os.symlink("c.txt", p("link"))
    t.append(("readlink", os.readlink(p("link"))))
    t.append(("through link", _read(p("link"))))
    t.append(("is link", os.path.islink(p("link")), stat.S_ISLNK(os.lstat(p("link")).st_mode)))
    os.symlink("nowhere", p("dangling"))
    _try(t, "read dangling", _read, p("dangling"))
    os.unlink(p("dangling"))

    # directories
    os.makedirs(p("d", "e", "f"))
    _write(p("d", "e", "f", "x"), b"x" * 100)
    os.rename(p("d", "e"), p("d", "moved"))
    t.append(("moved tree", _read(p("d", "moved", "f", "x"))))
    _try(t, "mkdir existing", os.mkdir, p("d"))
    _try(t, "rmdir non-empty", os.rmdir, p("d"))
    _try(t, "unlink a directory", os.unlink, p("d"))
    _try(t, "open missing", _read, p("missing"))
    _try(t, "listdir missing", os.listdir, p("missing"))
    _try(t, "exclusive create of an existing file", os.open, p("c.txt"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.unlink(p("d", "moved", "f", "x"))
    os.rmdir(p("d", "moved", "f"))
    t.append(("emptied", sorted(os.listdir(p("d", "moved")))))

    # a large file: writes and reads at random offsets
    size = 8 * 1024 * 1024 + 123
    blob = bytearray(rng.randbytes(size))
    _write(p("big.bin"), bytes(blob))
    with open(p("big.bin"), "r+b") as f:
        for _ in range(64):
            offset, length = rng.randrange(size), rng.randrange(1, 200_000)
            piece = rng.randbytes(length)
            f.seek(offset)
            f.write(piece)
            end = offset + length
            if end > len(blob):
                blob.extend(b"\0" * (end - len(blob)))
            blob[offset:end] = piece
    with open(p("big.bin"), "rb") as f:
        for _ in range(64):
            offset, length = rng.randrange(len(blob)), rng.randrange(1, 300_000)
            f.seek(offset)
            t.append(("random read", hashlib.sha1(f.read(length)).hexdigest()))
    t.append(("big sha1", hashlib.sha1(_read(p("big.bin"))).hexdigest(), len(blob),
              hashlib.sha1(bytes(blob)).hexdigest()))

    # many small files
    os.mkdir(p("many"))
    for i in range(300):
        _write(p("many", f"f{i:03d}"), f"file {i}\n".encode() * (i % 7))
    t.append(("many", sorted(os.listdir(p("many")))))
    t.append(("many sizes", sorted((e.name, e.stat(follow_symlinks=False).st_size) for e in os.scandir(p("many")))))
    t.append(("many contents", hashlib.sha1(b"".join(_read(p("many", f"f{i:03d}")) for i in range(300))).hexdigest()))
    return t


def tree(root):
    """Everything a user can see of a tree (names, types, modes, sizes,
    contents, link targets), for comparing two of them."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out.append((rel, "link", os.readlink(path)))
            elif stat.S_ISDIR(st.st_mode):
                out.append((rel, "dir", stat.S_IMODE(st.st_mode)))
            else:
                out.append((rel, "file", stat.S_IMODE(st.st_mode), st.st_size,
                            hashlib.sha1(_read(path)).hexdigest()))
    return out

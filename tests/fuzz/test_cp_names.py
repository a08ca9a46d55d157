"""Fuzz: cp's checks on what a host lists (skypty.client.cp).

Properties: ``check_name`` accepts a name only if it is one entry of its
directory (else UnsafeName, nothing else); and a whole download from a
lying source (any names: paths, '.', '..', NUL, links then names through
them, repeats, deep trees, big directories) into a real directory writes
nothing outside DST, raises nothing, and keeps to --max-depth and
--max-entries.
"""

import io
import os
import posixpath
import shutil
import stat
import tempfile

from hypothesis import example, given, strategies as st
from twisted.internet import defer

from skypty.client import cp as C
from tests.fuzz import fuzz, only

DST_PARENT = "/tmp/some/dst"


@fuzz(400)
@given(st.text(max_size=30))
@example("..")
@example("a/../../b")
@example("\0")
@example("caf\udce9")
def test_check_name(name):
    with only(C.UnsafeName):
        assert C.check_name(name) == name
        joined = os.path.normpath(os.path.join(DST_PARENT, name))
        assert os.path.dirname(joined) == DST_PARENT and os.path.basename(joined) == name


DIR, FILE, LINK, FIFO = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777, stat.S_IFIFO | 0o644
hostile_names = st.one_of(
    st.sampled_from(["a", "b", "lnk", ".", "..", "", "/", "../x", "../../x", "a/b", "lnk/z", "/abs", "x\0y",
                     "\x1b[2J"]),
    st.text(alphabet="ab./\0", max_size=5))
kinds = st.sampled_from([DIR, FILE, LINK, FIFO])
trees = st.recursive(
    st.lists(st.tuples(hostile_names, kinds, st.just([])), max_size=6),
    lambda children: st.lists(st.tuples(hostile_names, kinds, children), max_size=6),
    max_leaves=30)


class LyingSource:
    """A source side that lists *tree* under /src (pages of 2 entries)."""

    join, dirname, basename = staticmethod(posixpath.join), staticmethod(posixpath.dirname), \
        staticmethod(posixpath.basename)

    def __init__(self, tree, outside):
        self.listings, self.outside = {}, outside
        self._add("/src", tree)

    def _add(self, path, entries):
        self.listings.setdefault(path, []).extend((n, {"permissions": k, "size": 3}) for n, k, _ in entries)
        for name, kind, children in entries:
            if kind == DIR:
                self._add(posixpath.join(path, name), children)

    def stat(self, path, follow=True):
        return defer.succeed({"permissions": DIR, "size": 0})

    def opendir(self, path):
        pages = [self.listings.get(path, [])[i:i + 2] for i in range(0, len(self.listings.get(path, [])), 2)]
        return defer.succeed(_Pages(pages))

    def readlink(self, path):
        return defer.succeed(self.outside)

    def open_read(self, path):
        return defer.succeed(_Reader())


class _Pages:
    def __init__(self, pages):
        self.pages = pages

    def page(self):
        return defer.succeed(self.pages.pop(0) if self.pages else None)

    def close(self):
        pass


class _Reader:
    def read(self, offset, length):
        return defer.succeed(b"abc"[offset:offset + length])

    def close(self):
        return defer.succeed(None)


class _NoProgress:
    def start(self, total):
        pass

    def expect(self, n):
        pass

    def add(self, n):
        pass

    def clear(self):
        pass


def everything_under(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            out[path] = (st_.st_mode, open(path, "rb").read() if stat.S_ISREG(st_.st_mode) else None)
    return out


@fuzz(40)
@given(trees, st.integers(1, 3), st.integers(1, 8))
@example([("lnk", LINK, []), ("lnk/z", FILE, []), ("lnk", DIR, [("z", FILE, [])])], 3, 8)
@example([("..", DIR, [("x", FILE, [])]), ("a", DIR, [("a", DIR, [("a", DIR, [("a", FILE, [])])])])], 2, 8)
def test_a_lying_listing_never_writes_outside_dst(tree, max_depth, max_entries):
    base = tempfile.mkdtemp(prefix="skypty-fuzz-cp-")
    try:
        outside, dst = os.path.join(base, "outside"), os.path.join(base, "a", "b")
        os.makedirs(outside)
        os.makedirs(dst)
        with open(os.path.join(base, "a", "x"), "wb") as f:
            f.write(b"precious")
        before = {p: v for p, v in everything_under(base).items() if not p.startswith(dst + "/")}
        err = io.StringIO()
        copier = C.Copier(LyingSource(tree, outside), C.LocalSide(), preserve=False, recursive=True,
                          progress=_NoProgress(), err=err, max_depth=max_depth, max_entries=max_entries)
        done = copier.copy(["/src"], dst)
        results = []
        done.addBoth(results.append)
        assert results == [None], results  # synchronous sides: finished, and without an exception
        after = {p: v for p, v in everything_under(base).items() if not p.startswith(dst + "/")}
        assert after == before
        for path in everything_under(dst):
            depth = os.path.relpath(path, os.path.join(dst, "src")).count(os.sep)
            assert depth <= max_depth  # a directory at max_depth holds entries one level further
        assert "\x1b" not in err.getvalue()
    finally:
        for dirpath, dirnames, _ in os.walk(base):
            for d in dirnames:
                if not os.path.islink(os.path.join(dirpath, d)):
                    os.chmod(os.path.join(dirpath, d), 0o755)
        shutil.rmtree(base)

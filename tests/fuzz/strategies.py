"""Hypothesis strategies shared by the fuzz targets: values of any declared
Go type, byte mutations of known-good streams, chunkings."""

from hypothesis import strategies as st

from skypty.keys import SecretKey
from skypty.wire import gob
from skypty.wire import types as T

# Key generation is slow next to everything else: a fixed pool is enough.
SECRET_KEYS = [SecretKey(bytes([i + 1]) * 32) for i in range(6)]
PUBLIC_KEYS = [sk.public_key for sk in SECRET_KEYS]

# Every type a peer's gob stream may be decoded as.
GO_TYPES = [
    T.Request, T.Response, T.EMPTY, T.INT, T.UINT, T.BYTES, T.STRING, T.BOOL, T.PubKeys, T.StringSlice,
    T.WinSize, T.CommandReq, T.CommandReqV1, T.CommandExecReq, T.CommandExecResult, T.AttachReq,
    T.AttachResult, T.SessionInfo, T.SessionList, T.Addr, T.StreamRequest, T.StreamResponse, T.SHA256,
]


def values_of(t, small=True):
    """A strategy for Python values of Go type *t* that survive a round trip
    (zero pointers and null keys are sent as absent, so they are left out)."""
    n = 4 if small else 64
    if isinstance(t, gob._Builtin):
        if t.builtin_id == 1:
            return st.booleans()
        if t.builtin_id in (2, 3):
            lo, hi = ((-(1 << (t.bits - 1)), (1 << (t.bits - 1)) - 1) if t.signed else (0, (1 << t.bits) - 1))
            return st.integers(lo, hi)
        if t.builtin_id == 4:
            return st.floats(allow_nan=False)
        if t.builtin_id == 5:
            return st.binary(max_size=64 if small else 4096)
        return st.text(max_size=20 if small else 400)
    if isinstance(t, gob.Array):
        return st.lists(values_of(t.elem, small), min_size=t.length, max_size=t.length)
    if isinstance(t, gob.Slice):
        return st.lists(values_of(t.elem, small), max_size=n)
    if isinstance(t, gob.BinaryMarshaler):
        return st.sampled_from(PUBLIC_KEYS)
    if isinstance(t, gob.Struct):
        fields = {}
        for f in t.fields:
            s = values_of(f.type, small)
            if f.pointer or isinstance(f.type, gob.BinaryMarshaler):
                s = st.one_of(st.none(), s)
            fields[f.attr_name] = s
        return st.builds(t.cls, **fields)
    raise TypeError(t)


def mutate(data, edits):
    """Apply (position, kind, byte) edits: flip, insert, delete, truncate."""
    out = bytearray(data)
    for pos, kind, byte in edits:
        if not out:
            out.append(byte)
            continue
        i = pos % len(out)
        if kind == 0:
            out[i] ^= byte or 1
        elif kind == 1:
            out.insert(i, byte)
        elif kind == 2:
            del out[i]
        else:
            del out[i:]
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 3), st.integers(0, 255)), min_size=1, max_size=6)
chunk_sizes = st.lists(st.integers(1, 300), max_size=6)


def chunked(data, sizes):
    """*data* cut into pieces of the given sizes (cycled); one piece if none."""
    pos, i = 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)] if sizes else len(data)
        yield data[pos:pos + n]
        pos, i = pos + n, i + 1

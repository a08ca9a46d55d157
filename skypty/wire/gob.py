"""Go's encoding/gob, sans-I/O, for the types the pty and dmsg protocols use.

Types are declared once in Python (see skypty.wire.types).  An Encoder sends
each type's definition the first time it is used, allocating ids from 64 (as
Go >= 1.21 does; older toolchains started at 65, see FIRST_USER_ID) and naming
and ordering definitions exactly as a fresh Go process does (struct ids before
their fields' ids; a slice's or array's element id before its own; unnamed
types named by their Go type string when first met as a struct field, and ""
when first met at top level); a TypeRegistry shared by several encoders
reproduces a long-running Go process.  A Decoder learns definitions
from the stream, decodes generically, and then converts to the expected
Python type by field name, as Go does.  Anything malformed raises GobError.
"""

import keyword
import struct as _struct

from skypty.errors import ProtocolError

MAX_MESSAGE = 64 * 1024 * 1024
MAX_DEPTH = 32
MAX_TYPES = 1024
# Go's decoder has always accepted any id from 64 (its firstUserId) for a
# definition; what changed in Go 1.21 is the first id an encoder hands out:
# 65 before (an internal registration took 64), 64 since.  We decode both and
# encode as current Go does; LEGACY_FIRST_ID reproduces older captures.
FIRST_USER_ID = 64
LEGACY_FIRST_ID = 65


class GobError(ProtocolError):
    pass


# -- primitives ------------------------------------------------------------------

def encode_uint(n):
    if n < 0x80:
        return bytes((n,))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((256 - len(raw),)) + raw


def encode_int(n):
    return encode_uint((~n << 1) | 1 if n < 0 else n << 1)


def _zigzag_decode(u):
    return ~(u >> 1) if u & 1 else u >> 1


class _Reader:
    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf, pos=0, end=None):
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def remaining(self):
        return self.end - self.pos

    def uint(self):
        if self.pos >= self.end:
            raise GobError("gob: truncated integer")
        b = self.buf[self.pos]
        self.pos += 1
        if b < 0x80:
            return b
        n = 256 - b
        if n > 8:
            raise GobError("gob: integer longer than 8 bytes")
        if self.pos + n > self.end:
            raise GobError("gob: truncated integer")
        value = int.from_bytes(self.buf[self.pos:self.pos + n], "big")
        self.pos += n
        return value

    def int(self):
        return _zigzag_decode(self.uint())

    def raw(self, n):
        if n > self.end - self.pos:
            raise GobError("gob: length beyond the message")
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out


# -- the type model ------------------------------------------------------------------

class GoType:
    """A Go type.  ``name`` is Go's Name() ('' if unnamed); ``gostring`` is
    Go's String(), used as the definition name when an unnamed type is first
    met as a struct field."""

    name = ""
    gostring = ""
    builtin_id = None

    def field_name(self):
        return self.name or self.gostring


class _Builtin(GoType):
    def __init__(self, builtin_id, gostring, pytype, bits=None, signed=False):
        self.builtin_id = builtin_id
        self.gostring = gostring
        self.pytype = pytype
        self.bits = bits
        self.signed = signed

    def __repr__(self):
        return self.gostring


BOOL = _Builtin(1, "bool", bool)
INT = _Builtin(2, "int", int, 64, True)
INT64 = INT
UINT = _Builtin(3, "uint", int, 64)
UINT16 = _Builtin(3, "uint16", int, 16)
UINT8 = _Builtin(3, "uint8", int, 8)
FLOAT = _Builtin(4, "float64", float)
BYTES = _Builtin(5, "[]byte", bytes)
STRING = _Builtin(6, "string", str)
_BUILTIN_KIND = {1: "bool", 2: "int", 3: "uint", 4: "float", 5: "bytes", 6: "string"}


class Slice(GoType):
    def __init__(self, elem, gostring=None, name=""):
        self.elem = elem
        self.name = name
        self.gostring = gostring or "[]" + (elem.gostring or elem.name)

    def __repr__(self):
        return self.gostring


class Array(GoType):
    def __init__(self, elem, length, name="", gostring=None):
        self.elem = elem
        self.length = length
        self.name = name
        self.gostring = gostring or f"[{length}]{elem.gostring}"


class BinaryMarshaler(GoType):
    """A Go type with MarshalBinary: sent as an opaque byte string."""

    def __init__(self, name, to_bytes, from_bytes, gostring=None):
        self.name = name
        self.gostring = gostring or name
        self.to_bytes = to_bytes
        self.from_bytes = from_bytes


class Field:
    __slots__ = ("go_name", "type", "attr_name", "pointer")

    def __init__(self, go_name, type, attr_name, pointer=False):
        self.go_name = go_name
        self.type = type
        self.attr_name = attr_name
        self.pointer = pointer  # a Go pointer: None means nil, omitted

    def __repr__(self):
        return f"Field({self.go_name!r})"


class Record:
    """Base of the value classes made by :func:`record_class`: plain slotted
    objects compared and hashed by their fields."""

    __slots__ = ()

    def _values(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self):
        return hash((self.__class__, self._values()))

    def __repr__(self):
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{self.__class__.__name__}({inner})"


_MISSING = object()


def record_class(name, fields):
    """A value class with one slot per field; *fields* is [(name, default,
    factory)], a factory (e.g. ``list``) making a fresh default each time.

    Written by hand rather than with attrs: the client imports every wire
    type at start-up, and attrs' class generation alone cost ~10 ms there."""
    namespace, params, body = {"_MISSING": _MISSING}, [], []
    for i, (field, default, factory) in enumerate(fields):
        if keyword.iskeyword(field) or not field.isidentifier():
            raise ValueError(f"bad field name {field!r}")
        if factory is not None:
            namespace[f"_f{i}"] = factory
            params.append(f"{field}=_MISSING")
            body.append(f"    self.{field} = _f{i}() if {field} is _MISSING else {field}")
        else:
            namespace[f"_d{i}"] = default
            params.append(f"{field}=_d{i}")
            body.append(f"    self.{field} = {field}")
    exec(f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(body) or "    pass"), namespace)
    return type(name or "Empty", (Record,), {"__slots__": tuple(f[0] for f in fields),
                                             "__init__": namespace["__init__"]})


_LOWER_OR_DIGIT = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LOWER = frozenset("abcdefghijklmnopqrstuvwxyz")


def _snake(go_name):
    """ServiceMethod -> service_method, HTTPServer -> http_server: what
    re.sub(r"([a-z0-9])([A-Z])", r"\1_\2") then re.sub(r"([A-Z]+)([A-Z][a-z])",
    r"\1_\2") and lower() give, by hand (every wire type's fields are named at
    import, and compiling the two regexes was part of every client start)."""
    out, i, n = [], 0, len(go_name)
    while i < n:  # an underscore between a lower-case letter or digit and a capital
        c = go_name[i]
        out.append(c)
        if i + 1 < n and c in _LOWER_OR_DIGIT and go_name[i + 1] in _UPPER:
            out += ("_", go_name[i + 1])
            i += 2
        else:
            i += 1
    s = "".join(out)
    out, i, n = [], 0, len(s)
    while i < n:  # a run of capitals followed by a lower-case letter: its last capital starts a word
        if s[i] in _UPPER:
            j = i
            while j < n and s[j] in _UPPER:
                j += 1
            if j - i >= 2 and j < n and s[j] in _LOWER:
                out += (s[i:j - 1], "_", s[j - 1:j + 1])
                i = j + 1
                continue
            out.append(s[i:j])
            i = j
        else:
            out.append(s[i])
            i += 1
    return "".join(out).lower()


class Struct(GoType):
    """A Go struct; values are instances of ``cls`` (a record class, made on first use)."""

    def __init__(self, name, fields, cls=None, gostring=None):
        self.name = name
        self.gostring = gostring or name or "struct {}"
        self.fields = [f if isinstance(f, Field) else Field(f[0], f[1], f[2] if len(f) > 2 and f[2] else _snake(f[0]),
                                                            f[3] if len(f) > 3 else False)
                       for f in fields]
        self.by_go_name = {f.go_name: f for f in self.fields}
        self._cls = cls

    @property
    def cls(self):
        # Made on first use: the client imports ~25 wire types and uses a few.
        if self._cls is None:
            self._cls = record_class(self.name, [(f.attr_name, *_zero_default(f)) for f in self.fields])
        return self._cls

    def __call__(self, **kwargs):
        return self.cls(**kwargs)

    def __repr__(self):
        return f"Struct({self.name})"


def _zero(t):
    if isinstance(t, _Builtin):
        return {1: False, 2: 0, 3: 0, 4: 0.0, 5: b"", 6: ""}[t.builtin_id]
    if isinstance(t, (Slice, Array)):
        return []
    if isinstance(t, Struct):
        return t.cls()
    return None


def _zero_default(field):
    """-> (default value, factory or None) for a struct field."""
    if field.pointer or isinstance(field.type, BinaryMarshaler):
        return None, None
    t = field.type
    if isinstance(t, Struct):
        return None, t.cls
    if isinstance(t, (Slice, Array)):
        return None, list
    return _zero(t), None


EMPTY = Struct("", [], gostring="struct {}")


# -- encoding ------------------------------------------------------------------------

def _is_zero(t, value, pointer):
    if value is None:
        return True
    if pointer:
        return False
    if isinstance(t, _Builtin):
        return not value
    if isinstance(t, Slice):
        return len(value) == 0
    if isinstance(t, BinaryMarshaler):
        return not any(t.to_bytes(value))
    return False  # structs and arrays are always sent, as Go does


class TypeRegistry:
    """Type ids and definition names, which Go keeps per PROCESS: every
    encoder of a Go program draws from one table, so a long-running Go peer's
    later streams reuse the ids its earlier ones allocated, and skip the ids
    its other gob traffic took (a visor's own RPC, dmsg).  Each Encoder has a
    registry of its own unless given one (a fresh Go process per stream).
    *taken*: ids the process handed to types this registry never sees."""

    def __init__(self, first_id=FIRST_USER_ID, taken=()):
        self.ids = {}
        self.names = {}
        self.taken = frozenset(taken)
        self._next = first_id

    def allocate(self, t, name):
        while self._next in self.taken:
            self._next += 1
        self.ids[t], self.names[t] = self._next, name
        self._next += 1


class Encoder:
    """One gob stream direction: remembers which types it has defined."""

    def __init__(self, fast=True, first_id=None, registry=None):
        if registry is None:
            registry = TypeRegistry(FIRST_USER_ID if first_id is None else first_id)
        elif first_id is not None:
            raise ValueError("first_id belongs to the registry")
        self._registry = registry
        self._ids = registry.ids
        self._names = registry.names
        self._sent = set()
        self._fast = fast  # False: the generic path only (tests compare the two)
        self._flat = {}  # type -> its value encoder, once no definition is left to send

    def type_id(self, t):
        return t.builtin_id if t.builtin_id is not None else self._ids[t]

    def _allocate(self, t, name):
        if t.builtin_id is not None or t in self._ids:
            return
        if isinstance(t, Struct):
            self._registry.allocate(t, name)
            for f in t.fields:
                self._allocate(f.type, f.type.field_name())
        elif isinstance(t, (Slice, Array)):
            self._allocate(t.elem, t.elem.name)
            self._registry.allocate(t, name)
        elif isinstance(t, BinaryMarshaler):
            self._registry.allocate(t, name)
        else:
            raise TypeError(f"cannot gob-encode {t!r}")

    @staticmethod
    def _common(name, tid):
        out = []
        if name:
            out += [b"\x01", encode_uint(len(name.encode())), name.encode()]
            out += [b"\x01", encode_int(tid)]
        else:
            out += [b"\x02", encode_int(tid)]
        out.append(b"\x00")
        return b"".join(out)

    def _definition(self, t):
        tid, name = self._ids[t], self._names[t]
        common = self._common(name, tid)
        if isinstance(t, Struct):
            body = [b"\x03\x01", common]
            if t.fields:
                body += [b"\x01", encode_uint(len(t.fields))]
                for f in t.fields:
                    fname = f.go_name.encode()
                    body += [b"\x01", encode_uint(len(fname)), fname, b"\x01", encode_int(self.type_id(f.type)),
                             b"\x00"]
            body.append(b"\x00\x00")
        elif isinstance(t, Slice):
            body = [b"\x02\x01", common, b"\x01", encode_int(self.type_id(t.elem)), b"\x00\x00"]
        elif isinstance(t, Array):
            body = [b"\x01\x01", common, b"\x01", encode_int(self.type_id(t.elem)), b"\x01",
                    encode_int(t.length), b"\x00\x00"]
        else:  # BinaryMarshaler
            body = [b"\x06\x01", common, b"\x00\x00"]
        return encode_int(-tid) + b"".join(body)

    def _send_types(self, t, out):
        if t.builtin_id is not None or t in self._sent:
            return
        self._sent.add(t)
        out.append(_frame(self._definition(t)))
        if isinstance(t, Struct):
            for f in t.fields:
                self._send_types(f.type, out)
        elif isinstance(t, (Slice, Array)):
            self._send_types(t.elem, out)

    def encode(self, value, t):
        """gob messages (definitions if new, then the value) for *value* of type *t*."""
        if t.builtin_id == 5 and self._fast:  # []byte, the hot pty.Write/Read payload
            v = bytes(value)
            body = _BYTES_HEAD + encode_uint(len(v)) + v
            return encode_uint(len(body)) + body
        fast = self._flat.get(t)
        if fast is not None:
            return fast(value)
        self._allocate(t, t.name)
        out = []
        self._send_types(t, out)
        parts = [encode_int(self.type_id(t))]
        if isinstance(t, Struct):
            self._struct(t, value, parts)
        else:
            parts.append(b"\x00")
            self._value(t, value, parts)
        out.append(_frame(b"".join(parts)))
        if self._fast and (t.builtin_id is not None or (isinstance(t, Struct) and _flat_fields(t) is not None)):
            self._flat[t] = _flat_encoder(t, encode_int(self.type_id(t)))
        return b"".join(out)

    def _struct(self, t, value, parts):
        last = -1
        for i, f in enumerate(t.fields):
            v = getattr(value, f.attr_name)
            if _is_zero(f.type, v, f.pointer):
                continue
            parts.append(encode_uint(i - last))
            last = i
            self._value(f.type, v, parts)
        parts.append(b"\x00")

    def _value(self, t, v, parts):
        if isinstance(t, _Builtin):
            bid = t.builtin_id
            if bid == 3:
                parts.append(encode_uint(v))
            elif bid == 2:
                parts.append(encode_int(v))
            elif bid == 1:
                parts.append(b"\x01" if v else b"\x00")
            elif bid == 5:
                parts += [encode_uint(len(v)), bytes(v)]
            elif bid == 6:
                raw = v.encode("utf-8")
                parts += [encode_uint(len(raw)), raw]
            else:
                bits = _struct.unpack("<Q", _struct.pack("<d", v))[0]
                parts.append(encode_uint(int.from_bytes(bits.to_bytes(8, "little"), "big")))
        elif isinstance(t, Struct):
            self._struct(t, v, parts)
        elif isinstance(t, (Slice, Array)):
            if isinstance(t, Array) and len(v) != t.length:
                raise ValueError(f"{t.gostring} needs {t.length} elements")
            parts.append(encode_uint(len(v)))
            for item in v:
                self._value(t.elem, item, parts)
        else:
            raw = t.to_bytes(v)
            parts += [encode_uint(len(raw)), raw]


def _frame(body):
    return encode_uint(len(body)) + body


# -- fast paths ----------------------------------------------------------------------
# Every RPC message is a Request/Response header and then, on the hot path
# (pty.Read, pty.Write), one int or []byte: small flat values whose encoding
# and decoding were mostly interpreter overhead (isinstance chains, parts
# lists, a generic dict then a conversion).  These paths handle exactly the
# builtin types and structs whose fields are all builtins, produce the same
# bytes and the same values and errors as the generic code, and leave every
# other case to it (tests/test_gob_fast.py compares the two).

_BYTES_HEAD = encode_int(5) + b"\x00"  # type id of []byte, then the singleton marker


def _flat_fields(t):
    """[(attr name, builtin id)] if every field of struct *t* is a non-pointer builtin."""
    out = []
    for f in t.fields:
        if not isinstance(f.type, _Builtin) or f.pointer:
            return None
        out.append((f.attr_name, f.type.builtin_id))
    return out


def _builtin_bytes(bid, v):
    if bid == 6:
        raw = v.encode("utf-8")
        return encode_uint(len(raw)) + raw
    if bid == 3:
        return encode_uint(v)
    if bid == 2:
        return encode_int(v)
    if bid == 5:
        v = bytes(v)
        return encode_uint(len(v)) + v
    if bid == 1:
        return b"\x01" if v else b"\x00"
    bits = _struct.unpack("<Q", _struct.pack("<d", v))[0]
    return encode_uint(int.from_bytes(bits.to_bytes(8, "little"), "big"))


def _flat_encoder(t, tid):
    """value -> one framed gob message, for a builtin or a flat struct whose
    definitions are already sent; *tid* is its encoded type id."""
    if t.builtin_id is not None:
        bid, head = t.builtin_id, tid + b"\x00"

        def encode_builtin(value):
            body = head + _builtin_bytes(bid, value)
            return encode_uint(len(body)) + body
        return encode_builtin
    fields = _flat_fields(t)

    def encode_struct(value):
        parts, last = [tid], -1
        for i, (attr, bid) in enumerate(fields):
            v = getattr(value, attr)
            if not v:  # zero (or None): omitted, as Go does
                continue
            parts.append(encode_uint(i - last))
            last = i
            parts.append(_builtin_bytes(bid, v))
        parts.append(b"\x00")
        body = b"".join(parts)
        return encode_uint(len(body)) + body
    return encode_struct


_WIRE_PYTYPE = {1: bool, 2: int, 3: int, 4: float, 5: bytes, 6: str}


def _fits(wire_bid, t):
    """Does a value of builtin wire type *wire_bid* convert to builtin *t* (type-wise)?"""
    if t.builtin_id in (2, 3):
        return wire_bid in (2, 3)
    return _WIRE_PYTYPE[wire_bid] is t.pytype


def _builtin_at(bid, r):
    """One builtin value of wire type *bid* from *r* (what Decoder._value does for it)."""
    if bid == 6:
        try:
            return r.raw(r.uint()).decode("utf-8")
        except UnicodeDecodeError:
            raise GobError("gob: string is not UTF-8") from None
    if bid == 3:
        return r.uint()
    if bid == 2:
        return _zigzag_decode(r.uint())
    if bid == 5:
        return r.raw(r.uint())
    if bid == 1:
        v = r.uint()
        if v > 1:
            raise GobError("gob: bad bool")
        return bool(v)
    bits = r.uint()
    return _struct.unpack("<d", _struct.pack("<Q", int.from_bytes(bits.to_bytes(8, "little"), "big")))[0]


def _checked(value, t):
    """*value* (already of a fitting Python type) as *t*: integers range-checked as convert() does."""
    if t.bits is not None:
        lo, hi = ((-(1 << (t.bits - 1)), (1 << (t.bits - 1)) - 1) if t.signed else (0, (1 << t.bits) - 1))
        if not lo <= value <= hi:
            raise GobError(f"gob: value {value} overflows {t.gostring}")
    return value


def _flat_decoder(wire_bid, wire, expected):
    """r -> value, for a top-level message of builtin wire type *wire_bid* or
    struct *wire* read as *expected*; None where the generic path must decide."""
    if wire_bid is not None:
        if not isinstance(expected, _Builtin) or not _fits(wire_bid, expected):
            return None

        def decode_builtin(r):
            if r.uint() != 0:
                raise GobError("gob: missing singleton marker")
            value = _builtin_at(wire_bid, r)
            if r.remaining():
                raise GobError("gob: extra bytes after a value")
            return _checked(value, expected)
        return decode_builtin
    if wire.kind != "struct" or not isinstance(expected, Struct):
        return None
    spec = []  # per wire field: (wire builtin id, expected Field or None)
    for name, fid in wire.fields:
        if fid not in _BUILTIN_KIND:
            return None
        f = expected.by_go_name.get(name)
        if f is not None and not (isinstance(f.type, _Builtin) and _fits(fid, f.type)):
            return None
        spec.append((fid, f))
    count, cls = len(spec), expected.cls

    def decode_struct(r):
        found, field = {}, -1
        while True:
            d = r.uint()
            if d == 0:
                break
            field += d
            if field >= count:
                raise GobError("gob: field number out of range")
            fid, f = spec[field]
            value = _builtin_at(fid, r)
            if f is not None:  # unknown wire fields are decoded, then ignored, as Go does
                found[f] = value
        if r.remaining():
            raise GobError("gob: extra bytes after a value")
        return cls(**{f.attr_name: _checked(value, f.type) for f, value in found.items()})
    return decode_struct


# -- decoding -------------------------------------------------------------------------

class _Wire:
    __slots__ = ("kind", "name", "fields", "elem", "key", "length")

    def __init__(self, kind):
        self.kind = kind          # 'struct', 'slice', 'array', 'map', 'opaque'
        self.name = ""
        self.fields = ()          # struct: ((name, id), ...)
        self.elem = self.key = self.length = 0


NEED_MORE = object()


class Decoder:
    """One incoming gob stream.  Feed bytes; take values as they complete."""

    def __init__(self, max_message=MAX_MESSAGE, fast=True):
        self.max_message = max_message
        self._fast = fast  # False: the generic path only (tests compare the two)
        self._buf = bytearray()
        self._pos = 0  # consumed prefix of _buf, dropped lazily (no memmove per message)
        self._wire = {}
        self._flat = {}  # (type id, expected type) -> fast decoder, or None for the generic path

    def feed(self, data):
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self):
        return len(self._buf) - self._pos

    def _next_frame(self):
        """-> (type id, reader over the rest of the message) or None."""
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            return None
        if buf[pos] < 0x80:  # a short message: its length is one byte
            length, start = buf[pos], pos + 1
        else:
            header = _Reader(buf, pos)
            try:
                length = header.uint()
            except GobError:
                if len(buf) - pos >= 9:
                    raise
                return None  # the length itself is still arriving
            start = header.pos
        if length > self.max_message:
            raise GobError(f"gob: message of {length} bytes is over the limit")
        if length == 0:
            raise GobError("gob: empty message")
        if len(buf) - start < length:
            return None
        body = bytes(buf[start:start + length])
        self._pos = start + length
        reader = _Reader(body)
        return reader.int(), reader

    def next_value(self, expected=None):
        """The next value converted to *expected* (a GoType), the raw generic
        value if *expected* is None, or NEED_MORE."""
        while True:
            frame = self._next_frame()
            if frame is None:
                return NEED_MORE
            tid, r = frame
            if tid < 0:
                self._define(-tid, r)
                continue
            if expected is not None and self._fast:
                key = (tid, expected)
                fast = self._flat.get(key, _MISSING)
                if fast is _MISSING:
                    wire = self._wire.get(tid)
                    fast = None
                    if tid in _BUILTIN_KIND or wire is not None:
                        fast = _flat_decoder(tid if tid in _BUILTIN_KIND else None, wire, expected)
                    if len(self._flat) < MAX_TYPES:
                        self._flat[key] = fast
                if fast is not None:
                    return fast(r)
            generic = self._top_value(tid, r)
            if r.remaining():
                raise GobError("gob: extra bytes after a value")
            return generic if expected is None else convert(generic, expected)

    # -- definitions --
    def _define(self, tid, r):
        if tid < FIRST_USER_ID:
            raise GobError(f"gob: cannot redefine builtin type {tid}")
        if tid in self._wire:
            raise GobError(f"gob: type {tid} defined twice")
        if len(self._wire) >= MAX_TYPES:
            raise GobError("gob: too many type definitions")
        wire = self._wire_type(r)
        self._wire[tid] = wire

    def _wire_type(self, r):
        delta = r.uint()
        kinds = {1: "array", 2: "slice", 3: "struct", 4: "map", 5: "opaque", 6: "opaque", 7: "opaque"}
        if delta not in kinds:
            raise GobError("gob: bad wire type")
        kind = kinds[delta]
        wire = _Wire(kind)
        fields = []
        field = -1
        while True:
            d = r.uint()
            if d == 0:
                break
            field += d
            if field == 0:
                wire.name = self._common(r)
            elif kind == "struct" and field == 1:
                count = r.uint()
                if count > r.remaining():
                    raise GobError("gob: bad field count")
                for _ in range(count):
                    fname, fid, f = "", 0, -1
                    while True:
                        fd = r.uint()
                        if fd == 0:
                            break
                        f += fd
                        if f == 0:
                            fname = r.raw(r.uint()).decode("utf-8", "replace")
                        elif f == 1:
                            fid = r.int()
                        else:
                            raise GobError("gob: bad field type")
                    fields.append((fname, fid))
            elif kind in ("slice", "array", "map") and field == 1:
                if kind == "map":
                    wire.key = r.int()
                else:
                    wire.elem = r.int()
            elif kind == "array" and field == 2:
                wire.length = r.int()
            elif kind == "map" and field == 2:
                wire.elem = r.int()
            else:
                raise GobError("gob: bad wire type field")
        if r.uint() != 0:  # end of wireType
            raise GobError("gob: bad wire type end")
        wire.fields = tuple(fields)
        if kind == "array" and not 0 <= wire.length <= MAX_MESSAGE:
            raise GobError("gob: bad array length")
        return wire

    @staticmethod
    def _common(r):
        name, field = "", -1
        while True:
            d = r.uint()
            if d == 0:
                return name
            field += d
            if field == 0:
                name = r.raw(r.uint()).decode("utf-8", "replace")
            elif field == 1:
                r.int()
            else:
                raise GobError("gob: bad common type")

    # -- values --
    def _top_value(self, tid, r):
        wire = self._wire.get(tid)
        if wire is not None and wire.kind == "struct":
            return self._value(tid, r, 0)
        if r.uint() != 0:
            raise GobError("gob: missing singleton marker")
        return self._value(tid, r, 0)

    def _value(self, tid, r, depth):
        if depth > MAX_DEPTH:
            raise GobError("gob: values nested too deeply")
        if tid in _BUILTIN_KIND:
            kind = _BUILTIN_KIND[tid]
            if kind == "uint":
                return r.uint()
            if kind == "int":
                return r.int()
            if kind == "bool":
                v = r.uint()
                if v > 1:
                    raise GobError("gob: bad bool")
                return bool(v)
            if kind == "bytes":
                return r.raw(r.uint())
            if kind == "string":
                try:
                    return r.raw(r.uint()).decode("utf-8")
                except UnicodeDecodeError:
                    raise GobError("gob: string is not UTF-8") from None
            bits = r.uint()
            return _struct.unpack("<d", _struct.pack("<Q", int.from_bytes(bits.to_bytes(8, "little"), "big")))[0]
        wire = self._wire.get(tid)
        if wire is None:
            raise GobError(f"gob: unknown type id {tid}")
        if wire.kind == "struct":
            out = {}
            field = -1
            while True:
                d = r.uint()
                if d == 0:
                    return out
                field += d
                if field >= len(wire.fields):
                    raise GobError("gob: field number out of range")
                fname, fid = wire.fields[field]
                out[fname] = self._value(fid, r, depth + 1)
        if wire.kind in ("slice", "array"):
            count = r.uint()
            if count > r.remaining() and not self._is_empty_struct(wire.elem):
                raise GobError("gob: slice longer than the message")
            if count > MAX_MESSAGE:
                raise GobError("gob: slice too long")
            if wire.kind == "array" and count != wire.length:
                raise GobError("gob: array length mismatch")
            return [self._value(wire.elem, r, depth + 1) for _ in range(count)]
        if wire.kind == "map":
            count = r.uint()
            if count > r.remaining():
                raise GobError("gob: map longer than the message")
            return {self._hashable(self._value(wire.key, r, depth + 1)): self._value(wire.elem, r, depth + 1)
                    for _ in range(count)}
        return r.raw(r.uint())  # GobEncoder / BinaryMarshaler / TextMarshaler

    def _is_empty_struct(self, tid):
        w = self._wire.get(tid)
        return w is not None and w.kind == "struct" and not w.fields

    @staticmethod
    def _hashable(v):
        if isinstance(v, (dict, list)):
            raise GobError("gob: unhashable map key")
        return v


# -- conversion to the expected type ------------------------------------------------------

def convert(generic, t):
    """A decoded generic value -> the Python value for Go type *t*."""
    if isinstance(t, _Builtin):
        kind = t.builtin_id
        if kind in (2, 3):
            if isinstance(generic, bool) or not isinstance(generic, int):
                raise GobError(f"gob: expected {t.gostring}, got {type(generic).__name__}")
            lo, hi = ((-(1 << (t.bits - 1)), (1 << (t.bits - 1)) - 1) if t.signed else (0, (1 << t.bits) - 1))
            if not lo <= generic <= hi:
                raise GobError(f"gob: value {generic} overflows {t.gostring}")
            return generic
        if not isinstance(generic, t.pytype):
            raise GobError(f"gob: expected {t.gostring}, got {type(generic).__name__}")
        return generic
    if isinstance(t, Struct):
        if not isinstance(generic, dict):
            raise GobError(f"gob: expected struct {t.name}")
        kwargs = {}
        for go_name, value in generic.items():
            f = t.by_go_name.get(go_name)
            if f is not None:  # unknown wire fields are ignored, as Go does
                kwargs[f.attr_name] = convert(value, f.type)
        return t.cls(**kwargs)
    if isinstance(t, (Slice, Array)):
        if isinstance(t.elem, _Builtin) and t.elem.builtin_id == 3 and isinstance(generic, bytes):
            generic = list(generic)  # a []byte for a slice or array of small uints
        if not isinstance(generic, list):
            raise GobError(f"gob: expected {t.gostring}")
        if isinstance(t, Array) and len(generic) != t.length:
            raise GobError(f"gob: expected {t.length} elements")
        return [convert(v, t.elem) for v in generic]
    if isinstance(t, BinaryMarshaler):
        if not isinstance(generic, bytes):
            raise GobError(f"gob: expected {t.name} bytes")
        try:
            return t.from_bytes(generic)
        except Exception as e:
            raise GobError(f"gob: bad {t.name}: {e}") from None
    raise GobError(f"gob: cannot convert to {t!r}")

"""Text from a host, made safe to print on the user's terminal (pure).

A host chooses file names, SFTP error texts, RPC error strings, session
commands and whitelist labels.  Printed raw, ``ESC[2J`` clears the user's
screen, ``ESC]0;...BEL`` retitles the window and colours fake the client's
own words.  ``safe`` escapes every control character (C0 including
newline and ESC, DEL, C1), the bidi overrides that reorder what is shown,
and lone surrogates (bytes that were not UTF-8, decoded with
surrogateescape, which would otherwise make ``print`` raise): each becomes
``\\xNN`` / ``\\uNNNN``, so a name is still recognisable and the line
stays one line.  Printable text (the usual case) comes back unchanged.

Not for a shell's terminal stream or ``exec``'s stdout/stderr: those are
the user's own bytes and stay byte-exact.
"""

_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029)
_table = None


def _escapes():
    global _table
    if _table is None:
        table = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), *range(0x7F, 0xA0))}
        table.update({c: f"\\u{c:04x}" for c in _BIDI})
        # surrogateescape maps a stray byte 0xNN to U+DCNN: show the byte
        table.update({c: f"\\x{c - 0xDC00:02x}" for c in range(0xDC80, 0xDD00)})
        _table = table
    return _table


def safe(text):
    """*text* (str, bytes or anything with a str()) -> one printable line."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", "surrogateescape")
    elif not isinstance(text, str):
        text = str(text)
    if text.isprintable():  # no controls, no surrogates, no separators but space
        return text
    out = text.translate(_escapes())
    # any other surrogate (a str built by hand) cannot be encoded: escape it too
    if any(0xD800 <= ord(c) <= 0xDFFF for c in out):
        out = "".join(f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF else c for c in out)
    return out

"""ssh's escape character for interactive sessions (pure: bytes in, bytes and actions out).

Recognised only right after a newline (or at the very start): ``~.``
disconnects, ``~?`` lists the escapes, ``~~`` sends one ``~``; any other
character after ``~`` is sent with it, as ssh does.
"""

HELP = ("Supported escape sequences:\r\n"
        " {c}.   - disconnect\r\n"
        " {c}?   - this message\r\n"
        " {c}{c}   - send the escape character by typing it twice\r\n"
        "(Note that escapes are only recognized immediately after newline.)\r\n")

DISCONNECT = "disconnect"
SHOW_HELP = "help"


def parse_escape_char(text):
    """'-e' argument -> one byte, or None for 'none'.  Raises ValueError."""
    if text == "none":
        return None
    if len(text) == 2 and text[0] == "^" and 64 <= ord(text[1].upper()) < 96:
        return bytes((ord(text[1].upper()) & 0x1F,))
    if len(text) == 1 and ord(text) < 128:
        return text.encode()
    raise ValueError(f"bad escape character {text!r}: one character, ^X, or none")


class EscapeFilter:
    """Feed keystrokes; get (bytes for the host, [actions])."""

    def __init__(self, char=b"~"):
        self.char = char
        self._at_line_start = True
        self._pending = False  # saw the escape char at a line start

    def help_text(self):
        return HELP.format(c=self.char.decode("latin-1"))

    def feed(self, data):
        if self.char is None:
            return data, []
        out, actions = bytearray(), []
        for b in data:
            byte = bytes((b,))
            if self._pending:
                self._pending = False
                if byte == b".":
                    actions.append(DISCONNECT)
                    return bytes(out), actions  # nothing after ~. is sent
                if byte == b"?":
                    actions.append(SHOW_HELP)
                    continue
                if byte == self.char:
                    out += byte
                else:
                    out += self.char + byte
                self._at_line_start = byte in b"\r\n"
                continue
            if self._at_line_start and byte == self.char:
                self._pending = True
                continue
            out += byte
            self._at_line_start = byte in b"\r\n"
        return bytes(out), actions

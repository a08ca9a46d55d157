"""``skypty-client manhole PATH``: a terminal for the host's debugging manhole.

The manhole (twisted.conch) is a Python prompt with its own line editor and
history, reached over telnet on a unix socket.  This client is the telnet
end: it puts the terminal in raw mode, passes keys through, answers the
host's option requests (window size yes, line mode no) and keeps the telnet
commands off the screen.  Nothing but the standard library: no socat.

Ctrl-D on an empty line leaves; Ctrl-C interrupts the line being typed.
The user's terminal is never reset (a host's ESC c is dropped).  When stdin
or stdout is not a terminal it is a plain line-oriented prompt: lines go as
typed, and the screen comes without escape codes, one line per line.
"""

import os
import select
import signal
import socket
import struct
import sys

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
ECHO, SGA, NAWS = 1, 3, 31
CTRL_D = b"\x04"

# Options we agree to when asked: the host echoes and suppresses go-ahead
# (character at a time); we report the window size.  Everything else no.
_THEY_MAY = {ECHO, SGA}
_WE_WILL = {SGA, NAWS}


class TelnetClient:
    """Telnet for a terminal client, sans I/O: ``receive(bytes)`` ->
    (bytes for the screen, bytes to send back)."""

    def __init__(self, size=(80, 24)):
        self.size = size
        self.naws = False  # the host asked for our window size
        self._state = "data"
        self._command = None
        self._answered = set()  # (command, option): answer each request once, no loops

    @staticmethod
    def escape(data):
        """Keys to the host: a literal 0xFF byte is doubled."""
        return data.replace(b"\xff", b"\xff\xff")

    def window_size(self):
        if not self.naws:
            return b""
        cols, rows = (max(0, min(int(n), 0xFFFF)) for n in self.size)
        body = struct.pack(">HH", cols, rows).replace(b"\xff", b"\xff\xff")
        return bytes([IAC, SB, NAWS]) + body + bytes([IAC, SE])

    def resize(self, cols, rows):
        self.size = (cols, rows)
        return self.window_size()

    def _answer(self, command, option):
        if (command, option) in self._answered:
            return b""
        self._answered.add((command, option))
        if command == DO:
            if option in _WE_WILL:
                reply = bytes([IAC, WILL, option])
                if option == NAWS:
                    self.naws = True
                    reply += self.window_size()
                return reply
            return bytes([IAC, WONT, option])
        if command == WILL:
            return bytes([IAC, DO if option in _THEY_MAY else DONT, option])
        return b""  # DONT/WONT: nothing was on, nothing to answer

    def receive(self, data):
        screen, reply = bytearray(), bytearray()
        for byte in data:
            state = self._state
            if state == "data":
                if byte == IAC:
                    self._state = "iac"
                else:
                    screen.append(byte)
            elif state == "iac":
                if byte == IAC:
                    screen.append(IAC)
                    self._state = "data"
                elif byte in (DO, DONT, WILL, WONT):
                    self._command, self._state = byte, "option"
                elif byte == SB:
                    self._state = "sb"
                else:
                    self._state = "data"  # NOP, GA and friends
            elif state == "option":
                reply += self._answer(self._command, byte)
                self._state = "data"
            elif state == "sb":  # subnegotiations are skipped, never buffered
                if byte == IAC:
                    self._state = "sb-iac"
            elif state == "sb-iac":
                self._state = "data" if byte == SE else "sb"
        return bytes(screen), bytes(reply)


ESC, CSI_START, OSC_START, BEL, BS, CR, LF = 0x1B, 0x5B, 0x5D, 0x07, 0x08, 0x0D, 0x0A
MAX_SEQUENCE = 64  # a longer "escape sequence" is not one: let it go


class ScreenFilter:
    """The host's screen bytes -> ours, sans I/O.

    Always dropped: ESC c, the full reset (it clears the user's screen and
    scrollback settings).  *plain*: every escape sequence is dropped too, a
    line end (CR... LF) becomes LF, and other carriage returns, backspaces
    and bells (the line editor's cursor work) go; what is left is text."""

    def __init__(self, plain):
        self.plain = plain
        self._sequence = bytearray()  # an escape sequence being read
        self._cr = False  # a CR seen, waiting for what follows
        self.last = LF  # the last byte given out (plain: to end the output on a line end)

    def feed(self, data):
        out = bytearray()
        for byte in data:
            if self._sequence:
                self._sequence.append(byte)
                if self._complete() or len(self._sequence) > MAX_SEQUENCE:
                    sequence, self._sequence = bytes(self._sequence), bytearray()
                    if not self.plain and sequence != b"\x1bc":
                        out += sequence
                continue
            if byte == ESC:
                self._sequence.append(byte)
                continue
            if not self.plain:
                out.append(byte)
                continue
            if byte == CR:
                self._cr = True
                continue
            if byte == LF:
                self._cr = False
                out.append(LF)
                continue
            self._cr = False
            if byte in (BEL, BS):
                continue
            out.append(byte)
        if out:
            self.last = out[-1]
        return bytes(out)

    def _complete(self):
        seq = self._sequence
        if len(seq) < 2:
            return False
        kind = seq[1]
        if kind == CSI_START:  # ESC [ params final (0x40-0x7E)
            return len(seq) > 2 and 0x40 <= seq[-1] <= 0x7E
        if kind == OSC_START:  # ESC ] text BEL, or ESC ] text ESC \
            return seq[-1] == BEL or seq[-2:] == b"\x1b\\"
        if kind in b"()#%":  # ESC ( B and friends: one more byte
            return len(seq) == 3
        return True  # ESC c, ESC 7, ESC E ...

    def end(self):
        """Plain output ends on a line end (the last prompt has none)."""
        return b"\n" if self.plain and self.last != LF else b""


def socket_path(value):
    """'unix:/run/x.sock:mode=600' or '/run/x.sock' -> '/run/x.sock'."""
    if not value.startswith("unix:"):
        return value
    parts = []
    for part in value[5:].split(":"):
        if "=" in part and parts:
            break
        parts.append(part)
    return ":".join(parts).replace("\\", "")


def _terminal_size(fd):
    try:
        size = os.get_terminal_size(fd)
        return size.columns, size.lines
    except OSError:
        return 80, 24


def relay(sock, stdin_fd, stdout_fd, interactive):
    """Pass keys to the host and its screen to ours until the host hangs up."""
    core = TelnetClient(_terminal_size(stdin_fd) if interactive else (80, 24))
    screen_filter = ScreenFilter(plain=not interactive)
    try:
        _relay(sock, stdin_fd, stdout_fd, interactive, core, screen_filter)
    finally:
        tail = screen_filter.end()
        if tail:
            os.write(stdout_fd, tail)


def _relay(sock, stdin_fd, stdout_fd, interactive, core, screen_filter):
    resized = []
    if interactive:
        signal.signal(signal.SIGWINCH, lambda *_: resized.append(True))
    reading_keys, host_listens = True, True

    def send(data):
        nonlocal host_listens, reading_keys
        if data and host_listens:
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                # The host hung up (e.g. after piped input's Ctrl-D): what it said
                # before that may still be unread, so keep reading until EOF.
                host_listens = reading_keys = False

    while True:
        if resized:
            resized.clear()
            send(core.resize(*_terminal_size(stdin_fd)))
        watched = [sock] + ([stdin_fd] if reading_keys else [])
        try:
            readable, _, _ = select.select(watched, [], [])
        except InterruptedError:
            continue
        if sock in readable:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return
            screen, reply = core.receive(data)
            send(reply)
            screen = screen_filter.feed(screen)
            if screen:
                os.write(stdout_fd, screen)
        if stdin_fd in readable:
            keys = os.read(stdin_fd, 4096)
            if not keys:
                # Piped input has ended: Ctrl-D on the empty line asks the host to hang up
                # once the lines before it are answered.
                send(CTRL_D)
                reading_keys = False
                continue
            if not interactive:
                keys = keys.replace(b"\n", b"\r")
            send(TelnetClient.escape(keys))


def cmd_manhole(args, parser):
    from skypty.client.identity import IdentityError, config_path, read_config_json

    path = args.path
    if not path:
        config = config_path(args)
        try:
            data = read_config_json(config, hint="give the manhole's PATH, or -i CONFIG")
        except IdentityError as e:
            return _fail(str(e))
        section = (data.get("pty") or data.get("dmsgpty") or {}) if isinstance(data, dict) else {}
        path = section.get("manhole") if isinstance(section, dict) else None
        if not path:
            return _fail(f"{config} has no pty.manhole: give the manhole's PATH (the host's "
                         f"--manhole unix:PATH), or write one into the config (config gen --manhole "
                         f"unix:PATH, or \"manhole\": \"unix:PATH\" in its pty section) and restart the host")
    if not isinstance(path, str) or (":" in path.split("/")[0] and not path.startswith("unix:")):
        return _fail(f"{path}: only a unix socket manhole can be opened here (unix:PATH)")
    path = socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        return _fail(f"cannot open the manhole at {path}: {e.strerror} "
                     f"(is the host running with --manhole unix:{path}?)")
    from skypty.client.transport import ForeignSocketError, check_socket_owner

    try:
        check_socket_owner(sock, path, "the manhole", "pty.manhole")  # what is typed here is for the host alone
    except ForeignSocketError as e:
        sock.close()
        return _fail(str(e))
    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    # The line editor needs a terminal on both ends; else a plain line prompt.
    interactive = os.isatty(stdin_fd) and os.isatty(stdout_fd)
    if interactive:
        import termios
        import tty

        saved = termios.tcgetattr(stdin_fd)
        tty.setraw(stdin_fd)
    problem = None
    try:
        relay(sock, stdin_fd, stdout_fd, interactive)
    except OSError as e:
        problem = f"manhole connection failed: {e.strerror or e}"
    finally:
        sock.close()
        if interactive:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
            os.write(stdout_fd, b"\x1b[4l\r\n")  # the line editor's insert mode off; nothing else reset
    return _fail(problem) if problem else 0


def _fail(message):
    sys.stderr.write(f"skypty-client: {message}\n")
    return 1

"""Predictive local echo, as mosh does it, over a byte stream (sans-I/O).

Keystrokes and the host's output go in; bytes for the local terminal come
out.  The host's bytes are passed on unchanged and in order; predictions
are an overlay on top of them:

* An emulator (pyte, imported only once prediction is wanted) follows
  everything the local terminal was given, so the client knows the cursor,
  the modes and the cells of the cursor's row.
* A printable key, backspace, cursor-left and cursor-right are applied to
  that row at once ("predicted") and drawn on the local terminal.  Every
  other key (Enter, ^C, Tab, arrows up/down, a paste's brackets...) is
  opaque: nothing is predicted until the host has answered it.
* Before host output is written, the predicted cells are repainted from the
  emulator and the cursor put back, so the host's bytes meet exactly the
  terminal state they would meet without prediction; then the predictions
  still pending are drawn again on top of the new state.
* The host "confirms" a prediction when its output leaves the row and the
  cursor as predicted.  A prediction still unconfirmed a grace period after
  the host acknowledged the keystroke (its pty.Write reply) is wrong: it is
  erased and predictions are shown again only once one is confirmed.
  After an opaque key (Enter...) the same holds: the first prediction is
  tentative (kept, not shown) until the host confirms it, which is what
  keeps a password typed at a prompt that does not echo off the screen.
* Never a secret: with the host's tty modes known (skypty hosts send them
  with pty.ReadFlagged) nothing is predicted while the pty is canonical
  with echo off (``read -s``, sudo/ssh/getpass prompts, ``stty -echo``).
  No prediction either on the alternate screen (full-screen programs), in
  insert mode, with a non-ASCII character set, or near the right margin.
* A flood of output is not emulated: past FLOOD_BYTES of output the
  client has not needed, the bytes are dropped from the emulator (only
  their mode changes are kept), and prediction resumes on the flood's
  last line, or on the next one.

Time is passed in (``now``), never read here.
"""

import re

# tty mode bits of pty.ReadFlagged's first byte (skypty.host.shell.tty_mode)
TTY_KNOWN, TTY_ECHO, TTY_ICANON = 0x80, 0x01, 0x02

FLOOD_BYTES = 16 * 1024  # output not fed to the emulator beyond this is dropped (pyte: ~0.5 MB/s,
# so a keystroke after a burst of output waits at most ~30 ms for the emulator)
MODE_SEQS = 256  # mode changes kept before compaction
TAIL_BYTES = 4096  # a dropped flood's last line, fed to the fresh emulator if no longer than this
ON_RTT, OFF_RTT = 0.030, 0.020  # auto: predict above ON_RTT, stop below OFF_RTT (hysteresis)
UNDERLINE_RTT = 0.080  # unconfirmed predictions are underlined above this smoothed RTT
UNACKED_TIMEOUT = 3.0  # a keystroke the host never acknowledged

# what output may change that still matters after it is forgotten: modes,
# character sets, margins, a full reset; and the SGR attributes since the
# last reset of them (found from the end: colourful output resets on every line)
_MODES = re.compile(rb"\x1b(?:\[\??[0-9;]*[hlr]|[()*+][0-9A-Za-z<>=%]|c|[=>])")  # a literal first: fast
_SGR = re.compile(rb"\x1b\[[0-9;:]*m")
SGR_KEPT = 32

# a complete escape sequence (CSI, OSC/DCS/... strings with their end, the short ones)
_COMPLETE = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[PX^_][^\x1b]*\x1b\\"
                       rb"|[()*+#%][\x20-\x7e]|[\x20-\x7e](?<![\[\]PX^_()*+#%]))", re.S)
PARTIAL_MAX = 64 * 1024


def unfinished(data):
    """The end of *data* that the terminal still holds as an unfinished escape
    sequence or UTF-8 character (b"" if none): our own bytes must not follow it."""
    esc = data.rfind(b"\x1b")
    if esc >= 0 and not _COMPLETE.match(data, esc):
        return data[esc:]
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return b""
        if byte >= 0xC0:  # a lead byte: how many continuation bytes it wants
            wants = 1 if byte < 0xE0 else 2 if byte < 0xF0 else 3
            return data[-back:] if back - 1 < wants else b""
    return b""


CHAR, BACKSPACE, LEFT, RIGHT, OPAQUE = "char", "bs", "left", "right", "opaque"
_ARROWS = {b"\x1b[C": RIGHT, b"\x1bOC": RIGHT, b"\x1b[D": LEFT, b"\x1bOD": LEFT}


def parse_keys(data):
    """-> [(kind, text)]: the keys in one read from the keyboard."""
    keys, i, n = [], 0, len(data)
    while i < n:
        b = data[i]
        if 0x20 <= b < 0x7F:
            keys.append((CHAR, chr(b)))
            i += 1
        elif b in (0x7F, 0x08):
            keys.append((BACKSPACE, ""))
            i += 1
        elif data[i:i + 3] in _ARROWS:
            keys.append((_ARROWS[data[i:i + 3]], ""))
            i += 3
        else:
            keys.append((OPAQUE, ""))
            break  # the rest of the read means whatever this key makes it mean
    return keys


def _move(frm, to):
    if to > frm:
        return b"\x1b[%dC" % (to - frm)
    if to < frm:
        return b"\x1b[%dD" % (frm - to)
    return b""


class _Key:
    __slots__ = ("batch", "state", "deadline", "acked", "epoch")

    def __init__(self, batch, state, deadline, epoch):
        self.batch = batch
        self.state = state  # (row chars, cursor column) once the host has applied this key
        self.deadline = deadline
        self.acked = False
        self.epoch = epoch  # shown once the host has confirmed a prediction of this epoch


def compact_modes(seqs):
    """The mode-setting sequences *seqs*, without those a later one overrides."""
    last = {}
    sgr = []
    for seq in seqs:
        if seq == b"\x1bc":
            last.clear()
            sgr.clear()
        elif seq.endswith(b"m"):  # (the caller keeps SGR apart; kept here for completeness)
            if seq in (b"\x1b[m", b"\x1b[0m"):
                sgr.clear()
            else:
                sgr = sgr[-(SGR_KEPT - 1):] + [seq]
        elif seq[-1:] in (b"h", b"l"):
            for n in seq[2:-1].lstrip(b"?").split(b";"):  # one entry per mode number
                last.pop((seq[2:3] == b"?", n), None)
                last[(seq[2:3] == b"?", n)] = seq[:2] + (b"?" if seq[2:3] == b"?" else b"") + n + seq[-1:]
        elif seq in (b"\x0e", b"\x0f"):
            key = b"shift"
            last.pop(key, None)
            last[key] = seq
        else:  # margins, charsets, keypad
            key = seq[:2] if seq[:1] == b"\x1b" and seq[1:2] in b"()*+" else seq[-1:]
            last.pop(key, None)
            last[key] = seq
    return list(last.values()) + sgr


def _make_screen_class():
    import pyte

    class Screen(pyte.Screen):
        """pyte's screen, knowing when the alternate screen is on (pyte ignores it)."""

        alternate = False

        def set_mode(self, *modes, **kwargs):
            if kwargs.get("private") and any(m in (47, 1047, 1049) for m in modes):
                self.alternate = True
            super().set_mode(*modes, **kwargs)

        def reset_mode(self, *modes, **kwargs):
            if kwargs.get("private") and any(m in (47, 1047, 1049) for m in modes):
                self.alternate = False
            super().reset_mode(*modes, **kwargs)

        def reset(self):
            self.alternate = False
            super().reset()

        def select_graphic_rendition(self, *attrs, private=False):
            if not private:  # "CSI > 4;2 m" (xterm's modifyOtherKeys, vim sends it) is no SGR
                super().select_graphic_rendition(*attrs)

    return Screen, pyte.ByteStream, pyte.charsets.LAT1_MAP, pyte.modes.IRM


_PYTE = []


def _pyte():
    if not _PYTE:
        _PYTE.append(_make_screen_class())
    return _PYTE[0]


class Predictor:
    """One terminal's predictions.  *mode*: "auto" (on while the smoothed
    RTT is above ON_RTT) or "always"."""

    def __init__(self, rows, cols, mode="auto"):
        self.rows, self.cols = rows, cols
        self.mode = mode
        self.active = mode == "always"
        self.flags = None  # the host's tty modes (TTY_*), None while unknown
        self.srtt = None
        self.rttvar = 0.0
        self.screen = None
        self.stream = None
        self.backlog = []
        self.backlog_size = 0
        self.mode_seqs = []  # the output's mode changes (a fresh emulator replays them)
        self.sgr = []  # its SGR sequences since the last reset
        self.need_cr = False  # the emulator's row is not known until a new line (CR LF)
        self.epoch = 0  # a new one after every opaque key or failure
        self.shown_epoch = -1  # the latest epoch the host has confirmed
        self.pending = []  # _Key, oldest first
        self.row = None  # the emulator row the pending keys are on
        self.base = None  # (row chars, column) before pending[0]
        self.floor = None  # (row, column): backspace/left go no further left
        self.batch = 0
        self.opaque_batches = set()  # keystrokes sent unpredicted, not yet acknowledged
        self.blocked_until = 0.0
        self.shown = {}  # column -> (char, underlined) drawn over the emulator's row
        self.cursor = None  # the local terminal's cursor column while predictions are drawn
        self.predicted = self.confirmed = self.failed = 0
        self.partial = b""  # the host's output ends inside a sequence: draw nothing after it

    # -- inputs ----------------------------------------------------------------------------

    def set_flags(self, flags):
        """The host's tty modes, sent with its output (TTY_* bits)."""
        self.flags = flags if flags & TTY_KNOWN else None
        if self.flags is not None and not flags & TTY_ECHO and flags & TTY_ICANON:
            self._forget(None)  # a password prompt: not even a tentative prediction survives

    def rtt_sample(self, seconds, now):
        """A round trip measured by the caller (a keystroke's acknowledgement); -> bytes."""
        if self.srtt is None:
            self.srtt, self.rttvar = seconds, seconds / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - seconds)
            self.srtt = 0.875 * self.srtt + 0.125 * seconds
        if self.mode == "auto":
            if not self.active and self.srtt > ON_RTT:
                self.active = True
            elif self.active and self.srtt < OFF_RTT:
                self.active = False
                return self._abandon(now)
        return b""

    @property
    def grace(self):
        """How long after the host acknowledged a keystroke its echo may take."""
        return 0.05 + (self.srtt or 0.0) / 8

    def keys(self, data, now):
        """Keystrokes just sent to the host; -> (bytes for the terminal, batch id
        to pass to acked() when the host acknowledges them)."""
        self.batch += 1
        batch = self.batch
        if not self.active or not self._ready(now):
            self._opaque(batch)
            return b"", batch
        deadline = now + UNACKED_TIMEOUT
        for kind, char in parse_keys(data):
            state = self._apply(kind, char)
            if state is None:  # opaque, or not predictable here: the host answers it
                self._opaque(batch)
                break
            self.pending.append(_Key(batch, state, deadline, self.epoch))
            self.predicted += 1
        return self._redraw(), batch

    def _opaque(self, batch):
        """Keys sent unpredicted: no prediction until the host has answered
        them; the next ones are tentative until confirmed."""
        self.opaque_batches.add(batch)
        self.epoch += 1
        self.floor = None

    def acked(self, batch, now):
        """The host has the keystrokes of *batch* (its pty.Write reply)."""
        # Its echo may still be on its way: what is predicted from here on is
        # tentative (a new epoch), shown only once the host confirms it.
        self.opaque_batches.discard(batch)
        deadline = now + self.grace
        for key in self.pending:
            if key.batch == batch:
                key.deadline, key.acked = deadline, True

    def host_output(self, data, now):
        """The host's output; -> the bytes to give the terminal (*data* itself
        when nothing is predicted)."""
        undo = self._repaint({}, None) if self.cursor is not None else b""
        self.partial = unfinished(self.partial + data if self.partial else data)[-PARTIAL_MAX:]
        self._queue(data)
        if self.pending and self.backlog_size <= FLOOD_BYTES:
            self._feed()
            self._reconcile(now)
        if not self.pending and not undo:
            return data
        return b"".join((undo, data, self._redraw()))

    def _queue(self, data):
        if b"\x1b" in data:
            self._note_modes(data)
        if b"\x0e" in data or b"\x0f" in data:  # shift out/in: the last one counts
            self._note_modes(b"\x0e" if data.rfind(b"\x0e") > data.rfind(b"\x0f") else b"\x0f")
        self.backlog.append(data)
        self.backlog_size += len(data)
        if self.backlog_size > FLOOD_BYTES:
            self._drop_backlog()

    def _note_modes(self, data):
        modes = _MODES.findall(data) if data[:1] == b"\x1b" or len(data) > 1 else [data]
        if modes:
            self.mode_seqs += modes
            if len(self.mode_seqs) > MODE_SEQS:
                self.mode_seqs = compact_modes(self.mode_seqs)
        cut = max(data.rfind(b"\x1b[0m"), data.rfind(b"\x1b[m"), data.rfind(b"\x1bc"))
        if cut >= 0:
            self.sgr = []
        sgr = _SGR.findall(data, max(cut, 0))
        if sgr:
            self.sgr = (self.sgr + sgr)[-SGR_KEPT:]

    def tick(self, now):
        """Time passes: expire predictions the host did not confirm; -> bytes."""
        if self.pending and self.pending[0].deadline <= now:
            self._feed()
            self._reconcile(now)
            return self._redraw()
        return b""

    def next_deadline(self):
        return self.pending[0].deadline if self.pending else None

    def resize(self, rows, cols, now):
        """The local terminal changed size; -> bytes (predictions erased first)."""
        out = self._abandon(now)
        self.rows, self.cols = rows, cols
        if self.screen is not None:
            self._feed()
            if self.screen is not None:
                self.screen.resize(rows, cols)
        self.need_cr = True  # the terminal may have reflowed the row
        return out

    def local_output(self, data, now):
        """Bytes the client itself writes to the terminal (its [skypty: ...]
        notices); -> bytes to write before them (predictions erased)."""
        out = self._abandon(now)
        self._queue(data)
        return out

    def forget_keys(self, now):
        """The keys in flight will never be acknowledged (a new connection):
        predict again once the host has had time to answer them."""
        out = self._abandon(now)
        self.opaque_batches.clear()
        self.blocked_until = max(self.blocked_until, now + self.grace + (self.srtt or 0.0))
        return out

    def clear(self, now):
        """Erase every prediction (the link dropped, the user escaped); -> bytes."""
        return self._abandon(now)

    @property
    def displayed(self):
        return self.cursor is not None

    # -- the emulator ---------------------------------------------------------------------

    def _feed(self):
        if self.screen is None:
            screen_class, stream_class, _, _ = _pyte()
            self.screen = screen_class(self.cols, self.rows)
            self.stream = stream_class(self.screen)
            # a fresh emulator (at the start, or after a flood): the modes so
            # far, the cursor at the bottom, where a flood leaves it
            self._feed_bytes(b"".join(self.mode_seqs + self.sgr) + b"\x1b[%dH" % self.rows)
        if self.backlog:
            data = b"".join(self.backlog)
            self.backlog, self.backlog_size = [], 0
            if self.need_cr and b"\r\n" in data:
                self.need_cr = False
            self._feed_bytes(data)

    def _feed_bytes(self, data):
        try:
            self.stream.feed(data)
        except Exception:  # hostile output must not take the client down: forget the emulator
            self.screen = self.stream = None
            self.need_cr = True

    def _drop_backlog(self):
        """Too much output to emulate: forget it but for its mode changes and
        its last line (from its last CR LF: a fresh row, the column known)."""
        self._forget(None)
        data = b"".join(self.backlog)
        cr = data.rfind(b"\r\n")
        self.screen = self.stream = None
        self.backlog, self.backlog_size = [], 0
        if cr >= 0 and len(data) - cr <= TAIL_BYTES:
            self.backlog, self.backlog_size = [data[cr:]], len(data) - cr
            self.need_cr = False
        else:
            self.need_cr = True

    def _state(self):
        screen = self.screen
        line = screen.buffer[screen.cursor.y]
        return tuple(line[x].data for x in range(self.cols)), screen.cursor.x

    def _ready(self, now):
        """May a key typed now be predicted?"""
        if self.opaque_batches or now < self.blocked_until:
            return False
        flags = self.flags
        if flags is not None and not flags & TTY_ECHO and flags & TTY_ICANON:
            return False  # a password prompt, or stty -echo
        self._feed()
        screen = self.screen
        if screen is None or self.need_cr or not self._plain_modes():
            return False
        if screen.cursor.x > self.cols - 2 or screen.columns != self.cols:
            return False
        if self.pending and screen.cursor.y != self.row:
            return False
        return True

    def _plain_modes(self):
        """Does a character written now just replace the cell under the cursor?
        (Not on the alternate screen, in insert mode, or with another charset.)"""
        screen = self.screen
        _, _, lat1, irm = _pyte()
        return not (screen.alternate or irm in screen.mode or screen.charset != 0
                    or screen.g0_charset is not lat1)

    def _apply(self, kind, char):
        """The state after *kind* on top of the last prediction, or None."""
        if kind == OPAQUE:
            return None
        screen = self.screen
        if self.pending:
            cells, col = self.pending[-1].state
        else:
            cells, col = self._state()
            self.base = (cells, col)
            self.row = screen.cursor.y
        if self.floor is None or self.floor[0] != self.row:
            self.floor = (self.row, col)
        floor = self.floor[1]
        last = self.cols - 2  # the last column a prediction may write
        canonical = self.flags is not None and self.flags & TTY_ICANON
        if kind == CHAR:
            if col > last:
                return None
            if cells[col] == " " and cells[col + 1] == " ":  # at the end of the text: it only
                new = cells[:col] + (char,) + cells[col + 1:], col + 1  # overwrites (a right prompt stays)
            elif cells[last] != " " or cells[last + 1] != " ":
                return None  # inserting would push text into the margin
            else:  # inserting into text: the rest moves right
                new = cells[:col] + (char,) + cells[col:-1], col + 1
        elif kind == BACKSPACE:
            if col <= floor:
                return None
            new = cells[:col - 1] + cells[col:] + (" ",), col - 1
        elif kind == LEFT:
            if col <= floor or canonical:  # a canonical tty echoes arrows as ^[[D
                return None
            new = cells, col - 1
        else:  # RIGHT
            if col >= last or canonical or all(c == " " for c in cells[col:]):
                return None
            new = cells, col + 1
        if not self._drawable(new[0]):
            return None
        return new

    def _drawable(self, cells):
        """May the cells that differ from the emulator's row be drawn (and
        later repainted) with the terminal's current attributes?"""
        screen = self.screen
        line = screen.buffer[self.row]
        attrs = screen.cursor.attrs._replace(data=" ")
        for x, want in enumerate(cells):
            have = line[x]
            if have.data != want:
                if len(have.data) != 1 or not " " <= have.data < "\x7f":
                    return False
                if have._replace(data=" ") != attrs:
                    return False
        return True

    # -- reconciliation --------------------------------------------------------------------

    def _reconcile(self, now):
        screen = self.screen
        if screen is None:
            self._forget(now)
            return
        if screen.cursor.y == self.row:
            state = self._state()
            if state != self.base:
                for j in range(len(self.pending) - 1, -1, -1):
                    if self.pending[j].state == state:
                        self.confirmed += j + 1
                        self.shown_epoch = max(self.shown_epoch, self.pending[j].epoch)
                        del self.pending[:j + 1]
                        self.base = state
                        return
        if self.pending[0].deadline <= now:
            self.failed += 1
            self._forget(now)

    def _forget(self, now):
        """Drop the pending predictions (one was wrong, or they are no longer
        wanted); show none until one is confirmed again, and predict nothing
        until the host has answered the keys they stood for."""
        for key in self.pending:
            if key.acked:
                self.blocked_until = max(self.blocked_until, key.deadline)
            else:
                self.opaque_batches.add(key.batch)
        self.pending.clear()
        self.epoch += 1
        self.floor = None

    def _abandon(self, now):
        out = self._repaint({}, None) if self.cursor is not None else b""
        self._forget(now)
        return out

    # -- drawing ---------------------------------------------------------------------------

    def _redraw(self):
        """Draw the pending predictions the host has vouched for over the
        emulator's state, or erase what is drawn when none may be shown."""
        shown = None
        if self.pending and self.screen is not None and self.screen.cursor.y == self.row \
                and self._state() == self.base and self._plain_modes() and not self.partial:
            for key in self.pending:
                if key.epoch > self.shown_epoch:
                    break
                shown = key
        if shown is None or not self._drawable(shown.state[0]):
            return self._repaint({}, None) if self.cursor is not None else b""
        cells, col = shown.state
        line = self.screen.buffer[self.row]
        underline = (self.srtt or 0) > UNDERLINE_RTT and not self.screen.cursor.attrs.underscore
        want = {x: (c, underline) for x, c in enumerate(cells) if line[x].data != c}
        return self._repaint(want, col)

    def _repaint(self, want, col):
        """Bytes that take the terminal from what is drawn now to *want*
        (column -> (char, underlined)) with the cursor at *col*; ({}, None):
        the emulator's own cells and cursor."""
        screen = self.screen
        true_col = screen.cursor.x
        at = self.cursor if self.cursor is not None else true_col
        line = screen.buffer[screen.cursor.y]
        out = []
        for x in sorted(set(self.shown) | set(want)):
            cell = want.get(x)
            if cell == self.shown.get(x):
                continue
            out.append(_move(at, x))
            if cell is None:
                out.append(line[x].data.encode())
            elif cell[1]:
                out.append(b"\x1b[4m" + cell[0].encode() + b"\x1b[24m")
            else:
                out.append(cell[0].encode())
            at = x + 1
        target = true_col if col is None else col
        out.append(_move(at, target))
        self.shown = want
        self.cursor = None if col is None else target
        return b"".join(out)

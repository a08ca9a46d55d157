"""The keystroke hot path: gob fast paths (same bytes, values and errors as
the generic code), the client's non-blocking channels, and write_now on
Twisted transports."""

import socket
import threading

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet import abstract

from skypty.client.transport import PlainChannel
from skypty.wire import gob
from skypty.wire import types as T
from skypty.wire.writenow import write_now
from tests.fuzz.strategies import GO_TYPES, values_of
from tests.vectors import load

# -- gob: fast == generic ------------------------------------------------------------

ENCODED = [t for t in GO_TYPES if t is not T.SHA256]  # SHA256 values are lists of 32: covered by StreamResponse


@pytest.mark.parametrize("gotype", ENCODED, ids=repr)
def test_fast_encoder_writes_the_generic_bytes(gotype):
    @given(st.lists(values_of(gotype), min_size=1, max_size=4))
    @settings(max_examples=30, deadline=None)
    def run(values):
        fast, generic = gob.Encoder(), gob.Encoder(fast=False)
        for value in values:
            assert fast.encode(value, gotype) == generic.encode(value, gotype)

    run()


def _take_all(stream, expected, fast):
    """Every value of *stream* read as *expected*, or the GobError's text."""
    dec = gob.Decoder(fast=fast)
    dec.feed(stream)
    out = []
    try:
        while (v := dec.next_value(expected)) is not gob.NEED_MORE:
            out.append(v)
    except gob.GobError as e:
        out.append(("error", str(e)))
    return out


def _reference_streams():
    vectors = load("gob.json")["scenarios"]
    return [bytes.fromhex(sc[d]["stream"]) for sc in vectors.values() for d in ("client_to_server", "server_to_client")]


@pytest.mark.parametrize("expected", GO_TYPES, ids=repr)
def test_fast_decoder_agrees_with_the_generic_one_on_mutated_streams(expected):
    streams = _reference_streams()

    @given(st.sampled_from(streams), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4))
    @settings(max_examples=60, deadline=None)
    def run(stream, edits):
        data = bytearray(stream)
        for where, byte in edits:
            data[where % len(data)] = byte
        assert _take_all(bytes(data), expected, True) == _take_all(bytes(data), expected, False)

    run()


@pytest.mark.parametrize("wire_type, expected", [
    (T.UINT, T.UINT16), (T.INT, T.UINT), (T.UINT, T.INT), (T.INT, T.UINT8), (T.BOOL, T.INT), (T.INT, T.BOOL),
    (T.STRING, T.BYTES), (T.BYTES, T.STRING), (T.INT, T.Request),
])
def test_fast_decoder_range_and_type_errors_match(wire_type, expected):
    values = {T.UINT: [0, 7, 65535, 65536, 2**64 - 1], T.INT: [-1, 0, 300, 2**63 - 1, -(2**63)],
              T.BOOL: [True, False], T.STRING: ["x", ""], T.BYTES: [b"x", b""]}[wire_type]
    enc = gob.Encoder()
    stream = b"".join(enc.encode(v, wire_type) for v in values)
    for i in range(len(values)):  # each value first in its own stream, so one error does not hide the rest
        sub = gob.Encoder()
        one = sub.encode(values[i], wire_type)
        assert _take_all(one, expected, True) == _take_all(one, expected, False)
    assert _take_all(stream, expected, True) == _take_all(stream, expected, False)


def test_a_struct_read_as_another_with_fewer_and_unknown_fields():
    # A Response read as a Request: Error is unknown there (decoded, then ignored, as Go does).
    enc = gob.Encoder()
    stream = b"".join(enc.encode(T.Response.cls(service_method="pty.Read", seq=s, error=e), T.Response)
                      for s, e in ((0, ""), (1, "EOF"), (2**64 - 1, "x" * 300)))
    fast = _take_all(stream, T.Request, True)
    assert fast == _take_all(stream, T.Request, False)
    assert [(r.service_method, r.seq) for r in fast] == [("pty.Read", 0), ("pty.Read", 1), ("pty.Read", 2**64 - 1)]


# -- the client's channel ------------------------------------------------------------------

def test_channel_recv_waits_up_to_its_timeout_then_raises():
    a, b = socket.socketpair()
    a.settimeout(0.05)
    channel = PlainChannel(a)
    with pytest.raises(socket.timeout):
        channel.recv()
    b.sendall(b"hello")
    assert channel.recv() == b"hello"
    b.close()
    assert channel.recv() == b""
    channel.close()


def test_channel_send_finishes_a_write_larger_than_the_socket_buffer():
    a, b = socket.socketpair()
    a.settimeout(5)
    channel = PlainChannel(a)
    payload = bytes(range(256)) * 40000  # ~10 MB: many partial sends
    got = []
    reader = threading.Thread(target=lambda: got.append(b"".join(iter(lambda: b.recv(1 << 20), b""))))
    reader.start()
    channel.send(payload)
    a.shutdown(socket.SHUT_WR)
    reader.join(10)
    assert got == [payload]
    channel.close()
    b.close()


def test_channel_send_times_out_when_the_peer_never_reads():
    a, b = socket.socketpair()
    a.settimeout(0.1)
    channel = PlainChannel(a)
    with pytest.raises(socket.timeout):
        channel.send(b"x" * (64 << 20))
    channel.close()
    b.close()


# -- write_now --------------------------------------------------------------------------------

class _Reactor:
    def __init__(self):
        self.writers = set()

    def addWriter(self, w):
        self.writers.add(w)

    def removeWriter(self, w):
        self.writers.discard(w)

    def addReader(self, r):
        pass

    def removeReader(self, r):
        pass


class _Descriptor(abstract.FileDescriptor):
    def __init__(self, takes):
        super().__init__(_Reactor())
        self.connected = 1
        self.takes = list(takes)  # how many bytes each writeSomeData accepts
        self.written = []

    def writeSomeData(self, data):
        n = min(self.takes.pop(0) if self.takes else len(data), len(data))
        self.written.append(bytes(data[:n]))
        return n


def test_write_now_writes_in_the_callers_turn_when_nothing_is_queued():
    d = _Descriptor([])
    write_now(d, b"key")
    assert d.written == [b"key"] and not d.reactor.writers


def test_write_now_queues_the_rest_and_keeps_the_order():
    d = _Descriptor([2, 0])
    write_now(d, b"abcd")  # the kernel takes 2 bytes: the rest waits for writability
    assert d.written == [b"ab"] and d in d.reactor.writers
    write_now(d, b"ef")  # something is queued: this must not overtake it
    assert d.written == [b"ab"]
    while d in d.reactor.writers:
        d.doWrite()
    assert b"".join(d.written) == b"abcdef"


# -- start-up: hand-written stand-ins for regexes compiled at every start ---------------

def test_snake_case_names_match_the_regex_rules():
    import re

    from skypty.wire.gob import _snake

    def by_regex(name):
        s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
        return re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", s).lower()

    @given(st.text(alphabet="aZbYX9_1cD", max_size=12))
    @settings(max_examples=500, deadline=None)
    def run(name):
        assert _snake(name) == by_regex(name)

    run()
    for t in [getattr(T, n) for n in dir(T)]:
        for f in getattr(t, "fields", ()):
            assert _snake(f.go_name) == by_regex(f.go_name)


def test_durations_take_what_the_regex_took():
    import re

    from skypty.durations import DurationError, parse_duration

    pattern = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")

    @given(st.text(alphabet="0123456789.smh \t\u00a0\u0661\u00b2e+-", max_size=8))
    @settings(max_examples=500, deadline=None)
    def run(text):
        m = pattern.fullmatch(text)
        if m is None:
            with pytest.raises(DurationError):
                parse_duration(text)
        else:
            assert parse_duration(text) == float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2) or "s"]

    run()
    assert parse_duration("30s") == 30 and parse_duration("250ms") == 0.25 and parse_duration(" 5 m ") == 300


def test_plain_words_are_what_the_regex_called_plain():
    import re

    from skypty.client.cmdline import needs_shell

    plain = re.compile(r"[A-Za-z0-9_./@%+,:-]+")

    @given(st.text(max_size=8))
    @settings(max_examples=500, deadline=None)
    def run(word):
        assert needs_shell([word]) == (plain.fullmatch(word) is None)

    run()


# -- start-up: `exec PK -- CMD` without argparse ------------------------------------------

def _argparse_exec(words, command):
    from skypty.client.main import build_parser

    args, unknown = build_parser(only="exec").parse_known_args(["exec", *words])
    assert not unknown and args.command == []
    args.command = list(command)
    return vars(args)


def test_the_fast_exec_parser_knows_every_exec_option():
    from skypty.client.fastargs import DEFAULTS, FLAGS, VALUES
    from skypty.client.main import build_parser

    parser = build_parser(only="exec")
    exec_parser = next(a for a in parser._actions if a.dest == "verb").choices["exec"]
    options = {o for a in exec_parser._actions for o in a.option_strings if o not in ("-h", "--help")}
    assert options == set(FLAGS) | set(VALUES)
    dests = {a.dest: a.default for a in exec_parser._actions if a.dest not in ("help", "targets", "command")}
    assert dests == DEFAULTS


WORDS = st.lists(st.sampled_from([
    "03" + "ab" * 32, "web1", "@group", "-", "--via", "tcp://x@h:1", "--scheme", "dmsg", "skynet", "ftp",
    "--port", "2222", "0x10", "-5", "--timeout", "5s", "--stdin", "--json", "--parallel", "0", "3", "--group",
    "--connect-timeout", "-i", "cfg.json", "--input", "-p", "--pkg", "--sk", "--no-visor-key", "--cliaddr",
    "/tmp/pty.sock", "--clinet", "unix", "tcp", "--cliaddr=/x", "--port=7", "--port=", "-i=x", "--cli", "-h",
    "-pi", "", "--scheme=skynet", "--clinet=udp",
]), max_size=7)


@given(WORDS, st.lists(st.sampled_from(["true", "-c", "--", "x y"]), min_size=1, max_size=3))
@settings(max_examples=400, deadline=None)
def test_the_fast_exec_parser_agrees_with_argparse_or_steps_aside(words, command):
    from skypty.client.fastargs import parse_exec

    fast = parse_exec(words, command)
    if fast is None:
        return  # argparse decides (and reports any error)
    assert vars(fast) == _argparse_exec(words, command)


def test_the_plain_forms_take_the_fast_path():
    from skypty.client.fastargs import parse_exec

    pk = "03" + "ab" * 32
    for words in ([pk], [pk, "--cliaddr", "/tmp/a.sock"], ["-i", "c.json", pk, "--timeout", "5m", "--stdin"],
                  [pk, "--via", "tcp://k@h:2022", "--port=23", "-p"]):
        fast = parse_exec(words, ["uname", "-a"])
        assert fast is not None and vars(fast) == _argparse_exec(words, ["uname", "-a"])

"""Fuzz: the web terminal's WebSocket control messages (JSON text frames such
as {"type":"resize",...}), through a real TerminalFactory/TerminalProtocol
and autobahn's frame parser over an in-memory transport."""

import base64
import json
import struct

import pytest
from hypothesis import example, given, strategies as st
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from skypty.web.terminal import TerminalFactory
from tests.fuzz import fuzz

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class Transport(StringTransport):
    def unregisterProducer(self):
        self.producer = None  # as a TCP transport does; StringTransport raises when there is none


class Backend:
    """A terminal backend that records what the browser asked for."""

    def __init__(self):
        self.resizes, self.written = [], b""

    def open(self, rows, cols, sid=None, offset=None, commands=()):
        self.resizes.append((rows, cols))
        return defer.succeed((None, 0))

    def read(self, n):
        return defer.Deferred()  # no output: anything sent back is an answer to the input

    def write(self, data):
        self.written += data
        return defer.succeed(len(data))

    def resize(self, rows, cols):
        self.resizes.append((rows, cols))
        return defer.succeed(None)

    def close(self):
        pass


def open_terminal(query="?rows=24&cols=80", schemes=None):
    clock, backend = task.Clock(), Backend()

    def open_backend(identity, pk, transport, scheme=None):
        if schemes is not None:
            schemes.append(scheme)
        return defer.succeed(backend)

    factory = TerminalFactory(clock, lambda request, transport: "tester", open_backend, lambda path: None)
    # no timers on the global reactor from a unit test (pings, handshake deadlines)
    factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=0, closeHandshakeTimeout=0)
    proto = factory.buildProtocol(PEER)
    transport = Transport(peerAddress=PEER)
    proto.makeConnection(transport)
    key = base64.b64encode(b"0123456789abcdef").decode()
    proto.dataReceived((f"GET /pty/ws{query} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                        ).encode())
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    transport.clear()
    proto.clock = clock
    return proto, transport, backend


def ws_frame(payload, binary=False, mask=b"\x11\x22\x33\x44"):
    """One final, masked client frame."""
    n = len(payload)
    head = bytes((0x82 if binary else 0x81,))
    if n < 126:
        head += bytes((0x80 | n,))
    elif n < 65536:
        head += bytes((0x80 | 126,)) + struct.pack(">H", n)
    else:
        head += bytes((0x80 | 127,)) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


sizes = st.one_of(st.integers(-5, 1005), st.integers(), st.floats(), st.text(max_size=6), st.booleans(), st.none(),
                  st.lists(st.integers(0, 9), max_size=2), st.just("1" * 5000))
resizes = st.fixed_dictionaries({"type": st.sampled_from(["resize", "Resize", "", "exit"])},
                                optional={"rows": sizes, "cols": sizes, "x": sizes})
json_any = st.recursive(st.one_of(st.none(), st.booleans(), st.floats(), st.integers(), st.text(max_size=10)),
                        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                        max_leaves=8)
text_frames = st.one_of(
    resizes.map(json.dumps),                       # allow_nan: Infinity and NaN, as a browser's JSON never is
    json_any.map(json.dumps),
    st.text(max_size=60),
    st.integers(1, 3000).map(lambda n: "[" * n),
)
messages = st.lists(st.one_of(text_frames, st.binary(max_size=200)), min_size=1, max_size=6)


def sane(size):
    rows, cols = size
    return type(rows) is int and type(cols) is int and 0 < rows < 1000 and 0 < cols < 1000


@fuzz(120)
@given(messages, st.sampled_from(["?rows=24&cols=80", "", "?rows=0&cols=1e999", "?rows=%EF%BC%91&cols=2"]))
@example(['{"type": "resize", "rows": 40, "cols": 100}'], "")
# OverflowError out of int() and RecursionError out of json.loads escaped onMessage (fixed in b4f2cb7)
@example(['{"type": "resize", "rows": Infinity, "cols": 1}'], "")
@example(['{"type": "resize", "rows": 1e999, "cols": 1}'], "")
@example(["[" * 3000], "")
@example(['{"type": "resize", "rows": "' + "1" * 5000 + '", "cols": 1}'], "")
def test_control_messages(msgs, query):
    proto, transport, backend = open_terminal(query)
    written = b""
    for msg in msgs:
        if isinstance(msg, bytes):
            proto.dataReceived(ws_frame(msg, binary=True))
            written += msg
        else:
            proto.dataReceived(ws_frame(msg.encode("utf-8")))
    proto.clock.advance(5)  # a shell still waiting for its first size starts at the default
    assert all(sane(s) for s in backend.resizes)
    assert backend.written == written  # keystrokes arrive intact
    assert transport.value() == b"" and not transport.disconnecting  # a bad control message is just ignored


@fuzz(100)
@given(st.lists(st.tuples(st.integers(1, 999), st.integers(1, 999)), min_size=1, max_size=5))
def test_resize_round_trip(sizes_):
    proto, _, backend = open_terminal()
    for rows, cols in sizes_:
        proto.dataReceived(ws_frame(json.dumps({"type": "resize", "cols": cols, "rows": rows}).encode()))
    assert backend.resizes[-len(sizes_):] == sizes_


@fuzz(100)
@given(st.binary(max_size=300))
def test_raw_frames(data):
    """Autobahn's frame parser in front of onMessage: hostile frames close the
    connection, and nothing escapes dataReceived."""
    proto, transport, backend = open_terminal()
    proto.dataReceived(data)


# Fixed defect: a resize with Infinity or 1e999 raised OverflowError out of
# int(), past onMessage's except clause, into autobahn.
@pytest.mark.parametrize("size", ["Infinity", "-Infinity", "1e999", "true", "30.5", '"9999999"'])
def test_a_resize_with_a_silly_number_is_ignored(size):
    proto, transport, backend = open_terminal()
    proto.dataReceived(ws_frame(('{"type": "resize", "rows": %s, "cols": 1}' % size).encode()))
    assert backend.resizes == [(24, 80)]


# Fixed defect: a deeply nested JSON text frame raised RecursionError out of
# json.loads, past onMessage's except clause, into autobahn.
@pytest.mark.parametrize("payload", [b"[" * 3000, b"[" * 100000, b'{"type":"resize","rows":' + b" " * 5000 + b"1}"])
def test_deep_or_huge_control_messages_are_ignored(payload):
    proto, transport, backend = open_terminal()
    proto.dataReceived(ws_frame(payload))
    assert backend.resizes == [(24, 80)]


@pytest.mark.parametrize("query, expected", [("?scheme=skynet", "skynet"), ("?scheme=dmsg", "dmsg"), ("", None),
                                             ("?scheme=sky%20net", None), ("?scheme=" + "a" * 40, None)])
def test_the_scheme_in_the_page_url_reaches_the_dialer(query, expected):
    schemes = []
    open_terminal(query, schemes)
    assert schemes == [expected]

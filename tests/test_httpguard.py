"""The hardened HTTP sites (web terminal, discovery) driven with a Clock and
in-memory transports: head deadline, pending-connection cap, body cap,
redacted access log, one log line per web refusal, twistd's log file mode."""

import base64
import io
import os
import stat

import pytest
from twisted.internet import address, defer, task
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher, formatEvent
from twisted.python.logfile import LogFile
from twisted.web import resource

from skypty.dmsg.discserver import MAX_BODY, make_discovery_site
from skypty.keys import generate_keypair
from skypty.logs import make_log_file_private
from skypty.web import httpguard
from skypty.web.site import TokenGate, WhitelistGate, make_web_site

TOKEN = "T0ken-" + "s" * 40
PEER = address.IPv4Address("TCP", "10.1.2.3", 40000)


@pytest.fixture
def clock():
    """A Clock; Autobahn's timers (txaio's batched timers) run on it too, so
    an upgraded WebSocket leaves nothing behind on the global reactor."""
    import txaio

    c = task.Clock()
    c.advance(1700000000)
    old, txaio.config.loop = txaio.config.loop, c
    yield c
    txaio.config.loop = old


@pytest.fixture
def logged():
    """Every log event's text while the test runs."""
    events = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    yield lambda: [formatEvent(e) for e in events]
    globalLogPublisher.removeObserver(observer)


class PKTransport(StringTransport):
    """What a dmsg stream looks like to a Site: a transport with a proven key."""

    def __init__(self, pk):
        super().__init__(peerAddress=PEER)
        self.pk = pk

    def getPeerPK(self):
        return self.pk


def connect(site, transport=None):
    transport = transport or StringTransport(peerAddress=PEER)
    channel = site.buildProtocol(PEER)
    transport.protocol = channel  # as on a real transport (Autobahn's takeover swaps it)
    channel.makeConnection(transport)
    return channel, transport


def web_site(clock, gate=None, open_backend=None):
    pk, _ = generate_keypair()
    gate = gate or TokenGate(TOKEN)
    return make_web_site(clock, pk, gate, open_backend or (lambda *a: defer.fail(RuntimeError("no"))))


class Echo(resource.Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.bodies = []

    def render_POST(self, request):
        self.bodies.append(request.content.read())
        return b"ok"


# -- head deadline -----------------------------------------------------------------------

def test_a_trickled_request_head_is_cut_off_after_ten_seconds(clock):
    site = make_discovery_site(clock, clock)
    channel, transport = connect(site)
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    for i in range(9):  # one byte a second: twisted's idle timer would restart each time
        channel.dataReceived(head[i:i + 1])
        clock.advance(1)
    channel.dataReceived(head[9:10])
    clock.advance(0.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting
    assert transport.value().startswith(b"HTTP/1.1 408 ")


def test_the_deadline_restarts_for_each_request_and_idle_keepalive_closes_quietly(clock):
    site = make_discovery_site(clock, clock)
    channel, transport = connect(site)
    clock.advance(9)
    channel.dataReceived(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    clock.advance(9)  # 18 s since connect, 9 since the response: still fine
    assert not transport.disconnecting
    transport.clear()
    clock.advance(1.1)
    assert transport.disconnecting and transport.value() == b""  # no 408 on an idle connection


def test_a_websocket_is_not_killed_by_the_deadline_once_upgraded(clock):
    site = web_site(clock)
    channel, transport = connect(site)
    key = base64.b64encode(os.urandom(16)).decode()
    channel.dataReceived((
        f"GET /pty?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Origin: http://127.0.0.1:8080\r\n\r\n").encode())
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    assert site.pending == set()  # the slot went with the takeover
    clock.advance(120)
    assert not transport.disconnecting


# -- pending-connection cap --------------------------------------------------------------------

def test_connections_over_the_pending_cap_are_closed_at_once_and_slots_come_back(clock, logged):
    site = make_discovery_site(clock, clock)
    site.max_pending = 3
    held = [connect(site) for _ in range(3)]
    assert not any(t.disconnecting for _, t in held)
    _, refused = connect(site)
    _, refused2 = connect(site)
    assert refused.disconnecting and refused2.disconnecting
    assert sum("waiting for a request" in line for line in logged()) == 1  # not one per connection
    held[0][0].connectionLost(None)
    _, admitted = connect(site)
    assert not admitted.disconnecting


def test_one_source_holds_at_most_its_share_and_trickles_are_cut(clock):
    site = web_site(clock)
    held = [connect(site) for _ in range(httpguard.MAX_PENDING_PER_SOURCE)]
    for channel, _ in held:
        channel.dataReceived(b"G")
    assert connect(site)[1].disconnecting
    clock.advance(httpguard.HEAD_TIMEOUT + 0.1)
    assert all(t.disconnecting for _, t in held)


def connect_from(site, host, port=40000):
    peer = address.IPv4Address("TCP", host, port)
    return connect(site, StringTransport(peerAddress=peer))


@pytest.mark.parametrize("make", ["discovery", "web"])
def test_256_connections_held_by_one_address_do_not_lock_others_out(clock, make, logged):
    """#25 item 8: 256 connections held open from one address used to take
    every pending slot, so 36 of 46 /health requests from others failed."""
    site = make_discovery_site(clock, clock) if make == "discovery" else web_site(clock)
    held = [connect_from(site, "10.9.9.9", 1000 + i) for i in range(256)]
    refused = sum(t.disconnecting for _, t in held)
    assert refused == 256 - httpguard.MAX_PENDING_PER_SOURCE
    served = 0
    for i in range(46):
        channel, transport = connect_from(site, f"10.0.{i // 200}.{i % 200 + 1}")
        if transport.disconnecting:
            continue
        channel.dataReceived(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        if transport.value().startswith(b"HTTP/1.1 "):  # answered, whatever the page says
            served += 1
    assert served == 46
    # One line names the source holding the connections, not one per refusal.
    assert sum("10.9.9.9 holds" in line for line in logged()) == 1


def test_ipv6_sources_share_a_64_and_dmsg_sources_are_keyed_by_pk():
    from twisted.internet.address import IPv6Address

    def key(host):
        return httpguard.source_key(StringTransport(peerAddress=IPv6Address("TCP", host, 1)))

    assert key("2001:db8::1") == key("2001:db8::ffff:1") != key("2001:db8:0:1::1")
    pk, _ = generate_keypair()
    assert httpguard.source_key(PKTransport(pk)) == "pk:" + pk.hex()


def test_a_page_the_gate_admits_frees_the_slot(clock):
    site = web_site(clock)
    channel, transport = connect(site)
    assert channel in site.pending
    channel.dataReceived(f"GET /pty?token={TOKEN} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    assert channel not in site.pending
    channel2, transport2 = connect(site)
    channel2.dataReceived(b"GET /pty?token=wrong HTTP/1.1\r\nHost: h\r\n\r\n")
    assert transport2.value().startswith(b"HTTP/1.1 403 ")
    assert channel2 in site.pending


# -- body cap ----------------------------------------------------------------------------

@pytest.mark.parametrize("make", ["discovery", "web"])
def test_an_oversized_content_length_gets_413_before_any_body(clock, make):
    site = make_discovery_site(clock, clock) if make == "discovery" else web_site(clock)
    assert site.max_body == 64 * 1024
    channel, transport = connect(site)
    channel.dataReceived(b"POST /dmsg-discovery/entry/ HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 208666624\r\nExpect: 100-continue\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in transport.value()
    assert transport.disconnecting
    channel.dataReceived(b"x" * 100000)  # whatever still arrives is dropped, not spooled
    assert channel.requests[-1].content is None


def test_a_chunked_body_is_cut_off_once_over_the_cap(clock):
    echo = Echo()
    site = httpguard.GuardedSite(echo, "test", reactor=clock, max_body=1000)
    channel, transport = connect(site)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    channel.dataReceived(b"258\r\n" + b"a" * 600 + b"\r\n")
    assert transport.value() == b""
    channel.dataReceived(b"258\r\n" + b"a" * 600 + b"\r\n0\r\n\r\n")  # over, and the end in the same read
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert echo.bodies == []
    assert channel.requests[-1].content.tell() == 600


def test_bodies_under_the_cap_still_arrive_whole(clock):
    echo = Echo()
    site = httpguard.GuardedSite(echo, "test", reactor=clock, max_body=1000)
    channel, transport = connect(site)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"b" * 1000)
    channel2, transport2 = connect(site)
    channel2.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"3e8\r\n" + b"c" * 1000 + b"\r\n0\r\n\r\n")
    assert echo.bodies == [b"b" * 1000, b"c" * 1000]
    assert transport.value().startswith(b"HTTP/1.1 200 ") and transport2.value().startswith(b"HTTP/1.1 200 ")


def test_the_discovery_api_still_answers_a_small_post(clock):
    site = make_discovery_site(clock, clock)
    channel, transport = connect(site)
    channel.dataReceived(b"POST /dmsg-discovery/entry/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    assert transport.value().startswith(b"HTTP/1.1 400 ")  # the API's own "bad input", not a site refusal
    assert MAX_BODY == site.max_body


# -- access log --------------------------------------------------------------------------

def test_the_access_log_never_holds_the_token(clock):
    site = web_site(clock)
    site.startFactory()
    log = io.StringIO()
    site.logFile = log
    channel, transport = connect(site)
    channel.dataReceived((f"GET /pty?token={TOKEN} HTTP/1.1\r\nHost: h\r\n"
                          f"Referer: http://h/pty?token={TOKEN}\r\nCookie: skypty_token={TOKEN}\r\n"
                          "User-Agent: probe\r\n\r\n").encode())
    channel.dataReceived((f"GET /?token={TOKEN} HTTP/1.1\r\nHost: h\r\n"
                          f"Referer: http://h/pty?token={TOKEN}\r\n\r\n").encode())
    text = log.getvalue()
    site.stopFactory()
    lines = text.splitlines()
    assert len(lines) == 2, lines
    assert '"GET /pty?... HTTP/1.1" 200' in lines[0] and '"probe"' in lines[0]
    assert '"GET /?... HTTP/1.1" 403' in lines[1]
    assert TOKEN not in text and "token" not in text


def test_the_page_tells_the_browser_to_send_no_referer(clock):
    site = web_site(clock)
    channel, transport = connect(site)
    channel.dataReceived(f"GET /pty?token={TOKEN} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert b"Referrer-Policy: no-referrer" in transport.value()


# -- refusals are logged once, with who and where, never with the token ---------------------

def websocket_head(path, origin, host="127.0.0.1:8080"):
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n").encode()


def refusals(logged):
    return [line for line in logged() if line.startswith("refused ") or "web terminal refused" in line]


@pytest.mark.parametrize("head, why", [
    (b"GET /pty?token=guess-" + b"g" * 40 + b" HTTP/1.1\r\nHost: h\r\n\r\n", "page without a valid token"),
    (websocket_head("/pty", "http://127.0.0.1:8080"), "WebSocket without a valid token"),
    (websocket_head(f"/pty?token={TOKEN}", "http://evil.example"), "cross-origin WebSocket"),
])
def test_each_local_refusal_is_one_line_with_the_peer(clock, logged, head, why):
    site = web_site(clock)
    channel, transport = connect(site)
    channel.dataReceived(head)
    assert b" 403 " in transport.value().split(b"\r\n", 1)[0]
    assert refusals(logged) == [f"refused 10.1.2.3:40000 on web: {why}"]
    assert not any(TOKEN in line or "guess-" in line for line in logged())


def test_dmsg_refusals_name_the_proven_key(clock, logged):
    friend, _ = generate_keypair()
    stranger, _ = generate_keypair()
    site = web_site(clock, WhitelistGate({friend}))
    channel, transport = connect(site, PKTransport(stranger))
    channel.dataReceived(b"GET /pty HTTP/1.1\r\nHost: dmsg\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 403 ")
    channel, transport = connect(site, PKTransport(stranger))
    channel.dataReceived(websocket_head("/pty", "http://dmsg", host="dmsg"))
    assert transport.value().startswith(b"HTTP/1.1 403 ")
    assert refusals(logged) == [f"refused {stranger.hex()} on web-dmsg: page: not whitelisted",
                                f"refused {stranger.hex()} on web-dmsg: WebSocket: not whitelisted"]
    channel, transport = connect(site, PKTransport(friend))
    channel.dataReceived(b"GET /pty HTTP/1.1\r\nHost: dmsg\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    assert len(refusals(logged)) == 2


def test_refused_relaying_names_the_dmsg_peer(clock, logged):
    friend, _ = generate_keypair()
    third, _ = generate_keypair()

    def open_backend(identity, target_pk, transport, scheme=None):
        return defer.fail(PermissionError("relaying to another host is only offered to this host's own user"))

    site = web_site(clock, WhitelistGate({friend}), open_backend)
    channel, transport = connect(site, PKTransport(friend))
    channel.dataReceived(websocket_head(f"/pty/{third.hex()}", "http://dmsg", host="dmsg"))
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    lines = refusals(logged)
    assert len(lines) == 1
    assert lines[0].startswith(f"web terminal refused {friend.hex()} on web-dmsg (to {third.hex()}): relaying")


# -- twistd's log file ---------------------------------------------------------------------

@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_twistd_log_file_is_private_also_after_rotation(tmp_path, umask022):
    path = str(tmp_path / "twistd.log")
    make_log_file_private({"logfile": path, "nodaemon": True})
    assert os.umask(0o022) == 0o022  # the process umask is left alone
    log = LogFile.fromFullPath(path, rotateLength=100)  # what twistd opens next
    log.write("x" * 150 + "\n")
    log.write("after rotation\n")
    log.close()
    assert os.path.exists(path + ".1")
    assert mode(path) == 0o600 and mode(path + ".1") == 0o600
    with open(tmp_path / "user-file", "w"):
        pass
    assert mode(tmp_path / "user-file") == 0o644


def test_an_existing_world_readable_log_is_tightened(tmp_path, umask022):
    path = tmp_path / "old.log"
    path.write_text("old lines\n")
    (tmp_path / "old.log.1").write_text("older\n")
    os.chmod(path, 0o644)
    os.chmod(tmp_path / "old.log.1", 0o644)
    make_log_file_private({"logfile": str(path)})
    assert mode(path) == 0o600 and mode(tmp_path / "old.log.1") == 0o600
    assert path.read_text() == "old lines\n"


def test_stdout_and_syslog_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_log_file_private({"logfile": "-", "nodaemon": True})
    make_log_file_private({"logfile": None, "nodaemon": True})
    make_log_file_private({"logfile": None, "syslog": True})
    assert os.listdir(tmp_path) == []

"""The two HTTP ports of a real host (web terminal, embedded discovery) under
hostile clients: early 413, trickled heads, many open connections; and the
token kept out of a 0600 log file."""

import base64
import json
import os
import select
import socket
import stat
import subprocess
import sys
import time
import urllib.request

import pytest

from skypty.keys import generate_keypair
from tests.hosts import REPO, Host, env, wait_for

BIG = 199 * 1024 * 1024


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("webhard")).start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def token(host):
    r = host.client("url", "--cliaddr", host.cli)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().strip().split("token=")[1]


def ports(host):
    return {"web": host.web_port, "discovery": host.discovery_port}


def read_until_closed_or(sock, timeout):
    """-> (everything read, True if the peer closed) within *timeout* seconds."""
    data, deadline = b"", time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        ready, _, _ = select.select([sock], [], [], left)
        if ready:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return data, True
            if not chunk:
                return data, True
            data += chunk


def get(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        data, closed = read_until_closed_or(s, 10)
    assert closed
    return data.split(b"\r\n", 1)[0].decode()


@pytest.mark.parametrize("which", ["web", "discovery"])
def test_an_oversized_content_length_is_refused_before_the_body_is_sent(host, which):
    port = ports(host)[which]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        started = time.monotonic()
        s.sendall(f"POST /dmsg-discovery/entry/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {BIG}\r\n\r\n".encode())
        data, closed = read_until_closed_or(s, 10)  # not one byte of the body was sent
        elapsed = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 413 "), data
    assert closed and elapsed < 5


def websocket(port, token, as_page=False, expect=b"101"):
    """A WebSocket with the token as a script sends it (?token=), or as the
    page does (*as_page*: a subprotocol)."""
    key = base64.b64encode(os.urandom(16)).decode()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    path, offer = ("/pty", f"Sec-WebSocket-Protocol: skypty, skypty.token.{token}\r\n") if as_page else (
        f"/pty?token={token}", "")
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               f"{offer}Origin: http://127.0.0.1:{port}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 " + expect + b" "), head
    return s


def test_a_trickling_client_is_closed_within_ten_seconds_but_a_websocket_lives_on(host, token):
    ws = websocket(host.web_port, token)
    tricklers = [socket.create_connection(("127.0.0.1", port), timeout=10) for port in ports(host).values()]
    started = time.monotonic()
    head = b"GET /pty HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 100
    closed_after = {}
    sent = 0
    try:
        while len(closed_after) < len(tricklers) and time.monotonic() - started < 15:
            for s in tricklers:
                if s not in closed_after:
                    try:
                        s.sendall(head[sent:sent + 1])  # one byte a second
                    except OSError:
                        closed_after[s] = time.monotonic() - started
            sent += 1
            for s in tricklers:
                if s not in closed_after and read_until_closed_or(s, 1 / len(tricklers))[1]:
                    closed_after[s] = time.monotonic() - started
        assert len(closed_after) == len(tricklers), "a trickling client was still connected after 15 s"
        assert all(9 <= t <= 12 for t in closed_after.values()), closed_after
        # the upgraded WebSocket, as old as the tricklers, is still open (and being pinged)
        _, ws_closed = read_until_closed_or(ws, 12.5 - (time.monotonic() - started))
        assert not ws_closed
    finally:
        ws.close()
        for s in tricklers:
            s.close()


def test_requests_are_served_while_100_clients_trickle(host, token):
    tricklers = []
    try:
        for i in range(100):
            port = host.web_port if i % 2 else host.discovery_port
            # From 25 other addresses: one address may hold only its own share of pending slots.
            s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(f"127.0.2.{i % 25 + 1}", 0))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the end of the head
            tricklers.append(s)
        started = time.monotonic()
        assert get(host.web_port, f"/pty?token={token}").startswith("HTTP/1.1 200")
        assert get(host.discovery_port, "/health").startswith("HTTP/1.1 200")
        assert time.monotonic() - started < 5
    finally:
        for s in tricklers:
            s.close()


def joined_dmsg(host):
    url = f"http://127.0.0.1:{host.discovery_port}/dmsg-discovery/entry/{host.pk}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            entry = json.loads(resp.read())
    except (OSError, ValueError):
        return False
    return bool(entry.get("client", {}).get("delegated_servers"))


def test_dmsg_refusals_are_logged_with_the_proven_key(host):
    wait_for(lambda: joined_dmsg(host), timeout=30, what="the host to join its dmsg network")
    stranger_pk, stranger = generate_keypair()
    r = subprocess.run([sys.executable, "-m", "tests.dmsg_http_probe", f"http://127.0.0.1:{host.discovery_port}",
                        stranger.hex(), host.pk, "/pty"], capture_output=True, timeout=60, env=env(), cwd=REPO)
    assert r.stdout.decode().startswith("HTTP/1.0 403"), (r.stdout, r.stderr)
    line = f"refused {stranger_pk.hex()} on web-dmsg: page: not whitelisted"
    wait_for(lambda: line in host.log(), timeout=10, what="the refusal in the host log")
    assert host.log().count(f"refused {stranger_pk.hex()}") == 1  # once (the dmsg server logs its session too)


def test_the_log_file_is_0600_and_never_holds_the_token(host, token):
    # a page visit with the token, a bad guess, WebSockets with it (as a script
    # and as the page sends it) and with a bad guess as the page would
    assert get(host.web_port, f"/pty?token={token}").startswith("HTTP/1.1 200")
    assert get(host.web_port, "/pty?token=guess" + "g" * 40).startswith("HTTP/1.1 403")
    websocket(host.web_port, token).close()
    websocket(host.web_port, token, as_page=True).close()
    websocket(host.web_port, "guessppp" + "p" * 40, as_page=True, expect=b"403").close()
    # (the access log line may be filtered out of the file by level; when written, it is redacted)
    wait_for(lambda: "refused 127.0.0.1:" in host.log(), timeout=10, what="the refusal line")
    log = host.log()
    assert token not in log and "guessggg" not in log and "guessppp" not in log
    assert stat.S_IMODE(os.stat(host.log_path).st_mode) == 0o600
    with open(host.dir + "/skywire-config.json.web-token") as f:
        assert f.read().strip() == token
    assert stat.S_IMODE(os.stat(host.dir + "/skywire-config.json.web-token").st_mode) == 0o600

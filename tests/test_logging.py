"""The log at the default level: one line per meaningful event, no library chatter."""

import base64
import json
import os
import socket
import urllib.request

import pytest
from twisted.logger import LogLevel, PredicateResult

from skypty.logs import parse_level, predicates
from tests.hosts import Host, wait_for

CHATTER = ("autobahn", "HTTP11ClientFactory", "Starting factory", "Stopping factory", "dmsg-discovery/")


def open_web_terminal(host):
    """A WebSocket to the host's web terminal, held open until its shell started."""
    with open(host.config_path + ".web-token") as f:
        token = f.read().strip()
    key = base64.b64encode(os.urandom(16)).decode()
    origin = f"http://127.0.0.1:{host.web_port}"
    request = (f"GET /pty?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{host.web_port}\r\n"
               f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", host.web_port), timeout=10) as s:
        s.sendall(request.encode())
        assert b" 101 " in s.recv(4096).split(b"\r\n", 1)[0]
        wait_for(lambda: "via web" in host.log(), what="the web terminal's shell")


@pytest.fixture
def two_hosts(tmp_path):
    a = Host(tmp_path, "a")
    a.start()
    b = Host(tmp_path, "b", embedded=False, discovery_port=a.discovery_port)
    b.data["pty"]["whitelist"] = [a.pk]
    b.write_config()
    b.start()
    yield a, b
    b.stop()
    a.stop()


def registered(discovery_port, pk):
    """Is *pk* in the discovery (asked over HTTP: the access log stays out of the default log)."""
    url = f"http://127.0.0.1:{discovery_port}/dmsg-discovery/entry/{pk}"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return bool(json.load(r).get("client", {}).get("delegated_servers"))
    except (OSError, ValueError):
        return False


def exec_over_dmsg(a, b):
    wait_for(lambda: registered(a.discovery_port, b.pk), what="b to join a's network")
    r = a.client("exec", b.pk, "-i", a.config_path, "--", "echo", "over-dmsg", timeout=60)
    assert r.returncode == 0 and r.stdout == b"over-dmsg\n", r.stderr


def test_default_level_is_one_line_per_event(two_hosts):
    a, b = two_hosts
    open_web_terminal(a)
    exec_over_dmsg(a, b)
    wait_for(lambda: "ended" in a.log(), what="the web terminal's shell to end")
    log = a.log()
    lines = log.splitlines()
    assert len(lines) < 15, log
    for word in CHATTER:
        assert word not in log, word
    assert f"skypty host {a.pk} started: control unix:{a.cli}" in log
    assert f"via web" in log
    assert f"accepted {a.pk} on cli" in log
    assert f"accepted {a.pk} on dmsg" in b.log()


def test_debug_level_lets_everything_through(tmp_path):
    h = Host(tmp_path, "debug")
    h.data["pty"]["log_level"] = "debug"
    h.write_config()
    h.start()
    try:
        open_web_terminal(h)
        wait_for(lambda: "HTTP11ClientFactory" in h.log(), what="the HTTP client's lines")
        log = h.log()
        assert "Starting factory" in log and "#debug]" in log and "starting up" in log
    finally:
        h.stop()


def event(namespace, level, fmt="something happened"):
    return {"log_namespace": namespace, "log_level": level, "log_format": fmt}


def verdict(level, e):
    return all(p(e) != PredicateResult.no for p in predicates(level))


def test_policy_by_namespace_and_level():
    info = parse_level("info")
    assert verdict(info, event("skypty.host.connection.HostConnection", LogLevel.info))
    assert not verdict(info, event("skypty.web.terminal.TerminalProtocol", LogLevel.debug))
    assert not verdict(info, event("twisted.web.client._HTTP11ClientFactory", LogLevel.info))
    assert not verdict(info, event("log_legacy", LogLevel.info, '"127.0.0.1" - - "GET /"'))
    assert verdict(info, event("log_legacy", LogLevel.critical, "Unhandled error in Deferred"))
    assert verdict(info, event("twisted.internet.base", LogLevel.warn))
    assert not verdict(info, event("skypty.dmsg.server.DmsgServerFactory", LogLevel.info,
                                   "Starting factory {factory!r}"))
    warn = parse_level("WARN")
    assert not verdict(warn, event("skypty.host.connection.HostConnection", LogLevel.info))
    assert verdict(parse_level("debug"), event("anything", LogLevel.debug, "Starting factory"))
    with pytest.raises(ValueError, match="expected one of debug"):
        parse_level("loud")

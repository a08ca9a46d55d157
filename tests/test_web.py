"""The web terminal: gating over HTTP, and a real headless Chromium session."""

import base64
import os
import re
import socket
import time
import urllib.error
import urllib.request

import pytest

from tests.hosts import Host, wait_for


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("web"), persistent=True).start()
    yield h
    h.stop()


def web_url(host):
    r = host.client("url", "--cliaddr", host.cli)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().strip()


def http_get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def ws_handshake(port, path, origin, cookie=None):
    """A raw WebSocket upgrade; -> the status line the host answers with."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", f"Origin: {origin}"]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0].decode()


def test_url_carries_the_token_and_the_page_needs_it(host):
    url = web_url(host)
    assert re.fullmatch(rf"http://127\.0\.0\.1:{host.web_port}/pty\?token=[\w-]{{40,}}", url)
    status, body, _ = http_get(url.split("?")[0])
    assert status == 403 and b"skypty-client url" in body
    status, body, headers = http_get(url)
    assert status == 200 and b"xterm.js" in body
    assert "skypty_token=" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]


def test_websocket_without_token_or_from_another_origin_is_refused(host):
    token = web_url(host).split("token=")[1]
    before = set(host.children())
    origin = f"http://127.0.0.1:{host.web_port}"
    assert " 403" in ws_handshake(host.web_port, "/pty", origin)
    assert " 403" in ws_handshake(host.web_port, "/pty", "http://evil.example", f"skypty_token={token}")
    assert " 101" in ws_handshake(host.web_port, f"/pty?token={token}", origin)
    wait_for(lambda: True)
    # nothing was spawned for the refused handshakes (the accepted one may have started a shell)
    assert len(set(host.children()) - before) <= 1


# -- a real browser ------------------------------------------------------------------

def screen_text(driver):
    return driver.execute_script("""
        const b = window.skyptyTerm.buffer.active, out = [];
        for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
        return out.join('\\n');""")


def wait_text(driver, pattern, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        text = screen_text(driver)
        match = re.search(pattern, text)
        if match:
            return match
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} never appeared; the terminal shows:\n{text[-2000:]}")
        time.sleep(0.05)


def type_line(driver, text):
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea").send_keys(text + "\n")


def test_browser_types_resizes_and_survives_a_dropped_socket(host, browser):
    browser.get(web_url(host))
    wait_text(browser, r"[$#]\s*$")
    type_line(browser, "echo hello-$RANDOM")
    hello = wait_text(browser, r"\nhello-(\d+)").group(0).strip()

    # resize the window: fit -> resize message -> TIOCSWINSZ on the pty
    browser.set_window_size(700, 500)
    wait_for(lambda: browser.execute_script("return window.skyptyTerm.cols") < 100, what="the terminal to refit")
    cols, rows = browser.execute_script("return [window.skyptyTerm.cols, window.skyptyTerm.rows]")
    type_line(browser, "stty size")
    wait_text(browser, rf"\n{rows} {cols}\s")

    # drop the WebSocket: the page reconnects to the same session, nothing lost or repeated
    sid = browser.execute_script("return window.skyptySession")
    assert re.fullmatch(r"[0-9a-f]{16}", sid)
    browser.execute_script("window.skyptyDropSocket()")
    wait_for(lambda: browser.execute_script("return window.skyptyStatus") != "connected", what="the drop")
    wait_for(lambda: browser.execute_script("return window.skyptyStatus") == "connected", what="the reconnect")
    type_line(browser, "echo again-$((6*7))")
    wait_text(browser, r"again-42")
    text = screen_text(browser)
    assert text.count(hello) == 1  # the output survived the drop and was not replayed twice

    # a fresh page on ?sid= gets the host's scrollback replayed
    browser.get(web_url(host) + f"&sid={sid}")
    wait_text(browser, re.escape(hello))


def test_remote_pk_that_is_unreachable_gives_a_clear_error(host, browser):
    from skypty.keys import generate_keypair

    other = generate_keypair()[0].hex()
    browser.get(web_url(host).replace("/pty?", f"/pty/{other}?"))
    wait_text(browser, r"[0-9a-f]{16}… is not in dmsg discovery")
    assert screen_text(browser).count("is not in dmsg discovery") == 1  # said once, no retry storm


def test_large_output_reaches_the_browser_whole(host, browser):
    browser.get(web_url(host))
    wait_text(browser, r"[$#]\s*$")
    base = browser.execute_script("return window.skyptyBytes || 0")
    n = 4 * 1024 * 1024  # several full batches: none may exceed the WebSocket message limit
    type_line(browser, f"head -c {n} /dev/zero | tr -c x x; echo; echo big-$((1+1))")
    wait_text(browser, r"\nbig-2", timeout=60)
    assert browser.execute_script("return window.skyptyBytes") - base >= n

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


def ws_handshake(port, path, origin, cookie=None, protocols=None, head=False):
    """A raw WebSocket upgrade; -> the status line the host answers with (*head*: the whole head)."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", f"Origin: {origin}"]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    if protocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n\r\n", 1)[0].decode() if head else data.split(b"\r\n", 1)[0].decode()


def test_url_carries_the_token_and_no_cookie_ever_holds_it(host):
    # Regression (#25.9): the page set skypty_token=<token> as a cookie, which
    # the browser then sent to every other port on 127.0.0.1.
    url = web_url(host)
    assert re.fullmatch(rf"http://127\.0\.0\.1:{host.web_port}/pty\?token=[\w-]{{40,}}", url)
    token = url.split("token=")[1]
    status, body, headers = http_get(url)
    assert status == 200 and b"xterm.js" in body and b'data-needs-token="yes"' in body
    assert headers["Set-Cookie"] is None
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    # The page holds no secret: served without the token (a reload, once the
    # address bar has lost it), and it finds the token in its tab.
    status, body, headers = http_get(url.split("?")[0])
    assert status == 200 and token.encode() not in body and headers["Set-Cookie"] is None
    status, body, _ = http_get(url.split("?")[0] + "?token=wrong" + "w" * 40)
    assert status == 403 and b"skypty-client url" in body
    # An older host's cookie is deleted on sight.
    status, _, headers = http_get(url, {"Cookie": f"skypty_token={token}"})
    assert status == 200 and re.search(r"skypty_token=;.*Max-Age=0", headers["Set-Cookie"])


def test_the_websocket_takes_the_token_from_the_page_never_from_a_cookie(host):
    token = web_url(host).split("token=")[1]
    before = set(host.children())
    origin = f"http://127.0.0.1:{host.web_port}"
    offered = ["skypty", f"skypty.token.{token}"]
    assert " 403" in ws_handshake(host.web_port, "/pty", origin)
    # Regression (#25.9): the cookie another local port received opened a shell.
    assert " 403" in ws_handshake(host.web_port, "/pty", origin, f"skypty_token={token}")
    assert " 403" in ws_handshake(host.web_port, "/pty", "http://evil.example", protocols=offered)
    assert " 403" in ws_handshake(host.web_port, "/pty", "http://127.0.0.1:1", protocols=offered)
    assert " 403" in ws_handshake(host.web_port, "/pty", origin, protocols=["skypty", "skypty.token.x" * 3])
    accepted = ws_handshake(host.web_port, "/pty", origin, protocols=offered, head=True)
    assert " 101" in accepted.split("\r\n")[0]
    assert re.search(r"(?im)^sec-websocket-protocol: skypty\r?$", accepted)  # never the token back
    assert token not in accepted
    assert " 101" in ws_handshake(host.web_port, f"/pty?token={token}", origin)  # scripts
    wait_for(lambda: True)
    # nothing was spawned for the refused handshakes (the accepted ones may have started shells)
    assert len(set(host.children()) - before) <= 2


def test_a_favicon_is_served(host):
    status, body, headers = http_get(f"http://127.0.0.1:{host.web_port}/favicon.ico")
    assert status == 200 and headers["Content-Type"] == "image/svg+xml" and body.startswith(b"<svg")


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


class HeaderRecorder:
    """Another local user's web server on another port: records every request's headers."""

    def __init__(self):
        import http.server
        import threading

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append((self.path, dict(self.headers)))
                body = b"<title>another port</title>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_browser_keeps_the_token_to_this_origin_and_out_of_the_address_bar(host, browser):
    # Regression (#25.9): the token, kept in a cookie, reached every port on
    # 127.0.0.1, and the address bar (and history) kept showing it.
    url = web_url(host)
    token = url.split("token=")[1]
    other = HeaderRecorder()
    try:
        browser.get(url)
        wait_text(browser, r"[$#]\s*$")
        assert "token" not in browser.current_url
        assert browser.current_url == f"http://127.0.0.1:{host.web_port}/pty"
        type_line(browser, "echo works-$((2+3))")
        wait_text(browser, r"\nworks-5")
        assert browser.get_cookies() == []

        browser.get(f"http://127.0.0.1:{other.port}/")  # the same browser visits another local port
        wait_for(lambda: other.seen, what="the other port's request")
        assert all(token not in value for _path, headers in other.seen for value in headers.values()), other.seen

        # back on this origin, without the token in the URL: the tab still holds
        # it.  Any page could send the tab here, so ?commands= is not typed.
        browser.get(f"http://127.0.0.1:{host.web_port}/pty?commands=echo%20typed-by-a-link-$((6*7))")
        wait_text(browser, r"[$#]\s*$")
        type_line(browser, "echo again-$((3+4))")
        wait_text(browser, r"\nagain-7")
        assert "typed-by-a-link-42" not in screen_text(browser)
        assert browser.execute_script("return window.skyptyStatus") == "connected"
        # nothing refused by the page's Content-Security-Policy, no 404 for a favicon
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        other.close()


def test_commands_in_the_url_that_carries_the_token_are_typed(host, browser):
    browser.get(web_url(host) + "&commands=echo%20from-the-link-$((6*7))")
    wait_text(browser, r"\nfrom-the-link-42")
    assert "commands=" in browser.current_url and "token" not in browser.current_url


def test_a_page_without_a_token_says_where_to_get_one(host, browser):
    browser.get(f"http://127.0.0.1:{host.web_port}/pty")  # a fresh session: no token in this tab
    wait_text(browser, r"no token in this tab: open the URL printed by `skypty-client url`")


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

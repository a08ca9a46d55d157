"""The web terminal on a real link (#23): a silent socket is replaced and
the session reattached; the end of a session is always a visible line."""

import re

import pytest

from tests.hosts import Host, wait_for
from tests.test_web import screen_text, type_line, wait_text, web_url

CLOSED = "[session closed — reload to reconnect]"


@pytest.fixture(scope="module")
def phost(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("web-links-p"), persistent=True).start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("web-links")).start()
    yield h
    h.stop()


def status(browser):
    return browser.execute_script("return window.skyptyStatus") or ""


def test_a_silent_socket_is_replaced_and_the_session_reattached(phost, browser):
    browser.get(web_url(phost))
    wait_text(browser, r"[$#]\s*$")
    type_line(browser, "echo hello-$RANDOM")
    hello = wait_text(browser, r"\nhello-(\d+)").group(0).strip()
    sid = browser.execute_script("return window.skyptySession")
    browser.execute_script("window.skyptyStallSocket()")  # the path goes silent; a new one works
    wait_for(lambda: any("no contact" in line for line in browser.execute_script("return window.skyptyStatusLog")),
             timeout=15, what="the page to notice the silence")
    wait_for(lambda: status(browser) == "connected", timeout=15, what="the reattach")
    assert browser.execute_script("return window.skyptySession") == sid
    type_line(browser, "echo again-$((6*7))")
    wait_text(browser, r"again-42")
    assert screen_text(browser).count(hello) == 1  # nothing lost, nothing replayed twice
    assert CLOSED not in screen_text(browser)


def test_a_plain_shell_that_lost_its_socket_says_so(host, browser):
    browser.get(web_url(host))
    wait_text(browser, r"[$#]\s*$")
    browser.execute_script("window.skyptyDropSocket()")
    wait_text(browser, re.escape(CLOSED))
    assert "session closed" in status(browser)


def test_a_shell_that_exits_says_so(phost, browser):
    browser.get(web_url(phost))
    wait_text(browser, r"[$#]\s*$")
    type_line(browser, "exit")
    wait_text(browser, re.escape(CLOSED))

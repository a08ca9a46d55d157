"""Issue #23's targets over dmsg, on an emulated 200 ms RTT link
(tests/linkemu.py): `skypty-client start PK` through a local host in the
client namespace, whose dmsg session crosses the link to the server
embedded in the remote host (a relayed path: local host -> server ->
remote host).  tests/test_links.py has the same targets on the Noise TCP
port; benchmarks/bench_links.py the full-length figures."""

import re
import time

import pytest

from tests import linkemu
from tests.linkhosts import DISCOVERY_PORT, LinkHost, Term
from tests.test_links import (  # noqa: F401 (term_of: a fixture)
    ONE_WAY_MS, STATUS, term_of, ticker_resumes_whole, typed_through_an_outage,
)

WHY_NOT = linkemu.available()
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=f"link emulator: {WHY_NOT}")


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dmsglinks")
    with linkemu.Link(delay_ms=ONE_WAY_MS) as link:
        ns = type("Net", (), {})()
        ns.link = link
        ns.local = LinkHost(link, tmp, "local", side="client", discovery=f"http://{link.host_ip}:{DISCOVERY_PORT}")
        allowed = [ns.local.pk]
        ns.host = LinkHost(link, tmp, "default", whitelist=allowed).start()
        ns.phost = LinkHost(link, tmp, "persistent", persistent=True, port_offset=100,
                            discovery=ns.host.discovery_url, whitelist=allowed).start()
        ns.local.start()
        for pk in (ns.local.pk, ns.host.pk, ns.phost.pk):
            ns.local.wait_joined(pk)
        yield ns


def test_ctrl_c_in_a_flood_over_dmsg_is_back_at_the_prompt_within_half_a_second(net, term_of, tmp_path):
    term = term_of(net.local.start_argv(net.host.pk), "skypty-dmsg")
    term.send("while :; do seq 1 100000; done\r")
    assert term.wait_for("99999", 20) is not None
    time.sleep(1.0)  # let the flood fill every buffer on the path: what ^C has to cut through
    term.skip_to_end()
    start = time.monotonic()
    term.send("\x03")
    got = term.at_prompt(0.5)
    if got is None or got - start > 0.5:
        later = term.at_prompt(10)
        took = "no prompt within 10 s" if later is None else f"the prompt came {later - start:.2f} s after ^C"
        pytest.fail(f"{took}: {term.text(term.mark)[-300:]!r}")


def test_a_dead_relayed_link_is_reported_within_10s_and_its_return_too(net, term_of):
    term = term_of(net.local.start_argv(net.host.pk), "skypty-dmsg")
    net.link.down()
    down_at = time.monotonic()
    while time.monotonic() < down_at + 10 and not STATUS.search(term.text(term.mark)):
        time.sleep(0.05)  # polling with a deadline
    assert STATUS.search(term.text(term.mark)), "nothing said within 10 s of the link dying"
    term.skip_to_end()
    net.link.up()
    up_at = time.monotonic()
    while time.monotonic() < up_at + 5 and not STATUS.search(term.text(term.mark)):
        time.sleep(0.05)  # polling with a deadline
    assert re.search(r"back in contact", term.text(term.mark)), term.text(term.mark)[-500:]


def test_a_default_shell_over_dmsg_survives_70s_down_and_resumes_at_once(net, term_of):
    """The local host's dmsg session to its server, and the server's side of
    it, used to be closed 30-60 s into an outage (TCP keepalive, yamux
    pings), and every plain shell riding on it with them."""
    term = term_of(net.local.start_argv(net.host.pk), "skypty-dmsg")
    typed_through_an_outage(term, net.link, 70)
    term.send("echo AGAIN-$((40+3))\r")
    assert term.wait_for("AGAIN-43", 5) is not None


def test_a_persistent_session_over_dmsg_resumes_within_3s_of_the_link_returning(net, term_of):
    term = term_of(net.local.start_argv(net.phost.pk), "skypty-dmsg-persistent")
    ticker_resumes_whole(term, net.link, 20)

"""The link emulator's own tests: delay, loss, down/up, address change, rate,
teardown (no namespace or process left behind), the CLI."""

import os
import statistics
import subprocess
import sys
import time

import pytest

from tests import linkemu
from tests.linkemu import Link

WHY_NOT = linkemu.available()
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=f"link emulator: {WHY_NOT}")

# A line-echo server (host netns) and a client that sends "WORD TIMEOUT"
# stdin lines through one TCP connection and prints each reply or "timeout"
# (WORD "-" only reads: a late reply).
ECHO_SERVER = r"""
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen(); print("ready", flush=True)
def serve(c, peer):
    f = c.makefile("rwb", 0)
    for line in f:
        f.write(peer[0].encode() + b" " + line)
while True:
    c, peer = s.accept()
    threading.Thread(target=serve, args=(c, peer), daemon=True).start()
"""
ECHO_CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], 7000), timeout=10)
buf = b""
for line in sys.stdin:
    word, timeout = line.split()
    c.settimeout(float(timeout))
    if word != "-":
        c.sendall(word.encode() + b"\n")
    try:
        while b"\n" not in buf:
            chunk = c.recv(4096)
            if not chunk:
                raise OSError("eof")
            buf += chunk
        reply, buf = buf.split(b"\n", 1)
        print(reply.decode(), flush=True)
    except (socket.timeout, OSError):
        print("timeout", flush=True)
"""
BULK_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7001)); s.listen(); print("ready", flush=True)
c, _ = s.accept(); chunk = b"x" * 65536
for _ in range(int(sys.argv[1]) // 65536):
    c.sendall(chunk)
c.close()
"""
BULK_CLIENT = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], 7001)); start = time.monotonic(); n = 0
while True:
    d = c.recv(1 << 20)
    if not d:
        break
    n += len(d)
print(n, time.monotonic() - start)
"""


def start_server(link, code, *args):
    proc = link.popen_host([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def bulk(link, nbytes):
    """-> (bytes received, seconds) for nbytes host -> client over one TCP connection."""
    start_server(link, BULK_SERVER, nbytes)
    r = link.run_client([sys.executable, "-c", BULK_CLIENT, link.host_ip], capture_output=True, text=True,
                        timeout=60)
    n, secs = r.stdout.split()
    return int(n), float(secs)


class EchoClient:
    def __init__(self, link):
        self.proc = link.popen_client([sys.executable, "-c", ECHO_CLIENT, link.host_ip],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def say(self, word, timeout):
        self.proc.stdin.write(f"{word} {timeout}\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()


def test_ping_rtt_is_twice_the_delay():
    with Link(delay_ms=100) as link:
        rtts = link.ping(count=6, interval=0.02)
    assert None not in rtts
    assert 0.198 <= statistics.median(rtts) <= 0.215, rtts
    assert max(rtts) < 0.240, rtts


def test_no_delay_is_fast_and_delay_can_change_while_running():
    with Link(delay_ms=0) as link:
        assert statistics.median(link.ping(count=4, interval=0.01)) < 0.02
        link.set(delay_ms=50)
        assert 0.098 <= statistics.median(link.ping(count=4, interval=0.01)) <= 0.115


def test_loss_rate_matches_and_a_seed_repeats_it():
    send = ("import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for i in range(600):\n    s.sendto(b'x' * 100, (sys.argv[1], 9))\n")
    lost = []
    for _ in range(2):
        with Link(loss=0.2, seed=7) as link:
            link.run_client([sys.executable, "-c", send, link.host_ip], check=True)
            counts = link.stats()["c2h"]
        assert counts["received"] == 600
        assert 0.15 <= counts["lost"] / counts["received"] <= 0.25, counts
        lost.append(counts["lost"])
    assert lost[0] == lost[1]


def test_down_drops_everything_and_up_resumes_an_established_connection():
    with Link(delay_ms=10) as link:
        start_server(link, ECHO_SERVER)
        client = EchoClient(link)
        assert client.say("before", 5) == f"{link.client_ip} before"
        link.down()
        assert client.say("during", 1) == "timeout"
        assert link.ping(count=2, interval=0.01, timeout=0.3) == [None, None]
        assert link.stats()["c2h"]["down"] >= 2
        link.up()
        assert None not in link.ping(count=2, interval=0.01)
        # TCP retransmits what was dropped (after its backoff): the late reply arrives
        assert client.say("-", 10) == f"{link.client_ip} during"
        assert client.say("after", 5) == f"{link.client_ip} after"


def test_address_change_breaks_the_old_path_and_new_connections_use_the_new_address():
    with Link(delay_ms=5) as link:
        start_server(link, ECHO_SERVER)
        old = link.client_ip
        client = EchoClient(link)
        assert client.say("one", 5) == f"{old} one"
        new = link.change_client_address()
        assert new != old
        assert client.say("two", 1.5) == "timeout"
        assert client.say("-", 1.5) == "timeout"
        assert EchoClient(link).say("hello", 5) == f"{new} hello"


def test_relay_carries_more_than_10_MB_per_second():
    with Link(delay_ms=2) as link:
        n, secs = bulk(link, 32 << 20)
    assert n == 32 << 20
    assert n / secs > 10e6, f"{n / secs / 1e6:.1f} MB/s"


def test_rate_cap_bounds_throughput():
    with Link(delay_ms=5, rate_kbit=8000) as link:  # 1 MB/s
        n, secs = bulk(link, 1 << 20)
    assert n == 1 << 20
    assert 0.9 <= n / secs / 1e6 <= 1.1 * 1.05, f"{n / secs / 1e6:.2f} MB/s"


def test_teardown_kills_processes_and_deletes_namespaces_even_after_an_error():
    pids = []
    with pytest.raises(RuntimeError, match="boom"):
        with Link() as link:
            names = (link.client_ns, link.host_ns)
            assert set(names) <= set(linkemu.leftovers())
            for popen in (link.popen_client, link.popen_host):
                # a child that ignores SIGTERM: teardown must still end it
                proc = popen(["sh", "-c", "trap '' TERM; echo $$; exec sleep 1000"], stdout=subprocess.PIPE,
                             text=True)
                pids.append(int(proc.stdout.readline()))
            raise RuntimeError("boom")
    assert not set(names) & set(linkemu.leftovers())
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert not [line for line in subprocess.run(["ip", "-o", "link"], capture_output=True,
                                                text=True).stdout.splitlines() if linkemu.DEVICE in line]


def test_namespaces_of_a_dead_process_are_reaped_on_the_next_start():
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{linkemu.PREFIX}{dead.pid}-1-c"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with Link():
            assert stale not in linkemu.leftovers()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


def test_cli_runs_a_command_in_the_client_namespace_and_cleans_up():
    before = linkemu.leftovers()
    start = time.monotonic()
    r = subprocess.run([sys.executable, linkemu.__file__, "--delay", "20", "--host-cmd", "sleep 1000", "--",
                        "sh", "-c", "echo host=$LINKEMU_HOST_IP; ip -o -4 addr show lk0; exit 3"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 3, r.stderr
    assert "host=10.23.0.1" in r.stdout
    assert "10.23.1.2/32" in r.stdout
    assert "20 ms each way" in r.stderr
    assert linkemu.leftovers() == before
    assert time.monotonic() - start < 15

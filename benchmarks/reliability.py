"""Reliability figures for docs/reliability.md, against a live host.

    python3 benchmarks/reliability.py [--hold 40] [--execs 2000] [--shells 200]

Starts one host (embedded dmsg discovery + server, Noise TCP port, web
terminal), then measures:
  * idle and trickling connections on every port: how many the host still
    holds after each interval, and when it closed them;
  * processes spawned for strangers on every entry point (must be 0);
  * fds / RSS / zombies after N sequential execs and M concurrent shells,
    against the baseline.
Prints a Markdown table per part.
"""

import argparse
import os
import select
import socket
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.hosts import Host, wait_for  # noqa: E402


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def hold(host, seconds, per_port):
    """Open idle and trickling connections on each port; watch when they close."""
    ports = {
        "control socket (unix)": ("unix", host.cli),
        "Noise TCP (ssh_listen)": ("tcp", host.tcp_port),
        "web terminal (HTTP)": ("tcp", host.web_port),
        "dmsg discovery (HTTP)": ("tcp", host.discovery_port),
        "dmsg server": ("tcp", host.server_port),
    }
    trickle_bytes = {
        "control socket (unix)": b"\xff" + b"a" * 255,          # a request line, one byte a second
        "Noise TCP (ssh_listen)": b"\x00\x21" + b"\x02" * 33,    # the start of a handshake message
        "web terminal (HTTP)": b"GET /pty HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200,
        "dmsg discovery (HTTP)": b"GET /dmsg-discovery/entries HTTP/1.1\r\nX-Slow: " + b"a" * 200,
        "dmsg server": b"\x00\x21" + b"\x02" * 33,
    }
    conns = []  # [port name, mode, socket, opened, closed_at]
    for name, (kind, address) in ports.items():
        for mode in ("idle", "trickle"):
            for i in range(per_port):
                try:
                    if kind == "unix":
                        s = socket.socket(socket.AF_UNIX)
                        s.connect(address)
                    else:
                        # From 50 addresses: the HTTP ports give one address only its share of slots.
                        s = socket.create_connection(("127.0.0.1", address), timeout=5,
                                                     source_address=(f"127.0.3.{i % 50 + 1}", 0))
                except OSError:
                    conns.append([name, mode, None, time.monotonic(), 0.0])  # refused at once
                    continue
                s.setblocking(False)
                conns.append([name, mode, s, time.monotonic(), None])
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        live = [c for c in conns if c[2] is not None and c[4] is None]
        if not live:
            break
        ready, _, _ = select.select([c[2] for c in live], [], [], 0.2)
        for c in live:
            if c[2] in ready:
                try:
                    if c[2].recv(65536) == b"":
                        c[4] = time.monotonic() - c[3]
                except BlockingIOError:
                    pass
                except OSError:
                    c[4] = time.monotonic() - c[3]
        due = int(time.monotonic() - start)
        if due > sent:  # one byte per second to every trickling connection
            sent = due
            for c in live:
                if c[1] == "trickle" and c[4] is None:
                    data = trickle_bytes[c[0]]
                    try:
                        c[2].send(data[(sent - 1) % len(data):][:1])
                    except OSError:
                        c[4] = time.monotonic() - c[3]
    rows = []
    for name in ports:
        for mode in ("idle", "trickle"):
            group = [c for c in conns if c[0] == name and c[1] == mode]
            closed = [c[4] for c in group if c[4] is not None]
            still = len(group) - len(closed)
            when = f"{min(closed):.1f}–{max(closed):.1f} s" if closed else "—"
            rows.append((name, mode, len(group), still, when))
    for c in conns:
        if c[2] is not None:
            c[2].close()
    return rows


def hostile(host, rounds):
    """Garbage at every port (tests/test_hostile_host.py's payloads) while a
    legitimate client keeps running execs; -> (blasts, execs ok during, failed
    during, ok after)."""
    import threading

    from tests.test_hostile_host import _unix, blast, payloads

    ok, failed, stop = [0], [0], threading.Event()

    def legit():
        while not stop.is_set():
            r = host.client("shell", host.target, "-i", host.config_path, "--", "echo", "ok")
            if r.returncode == 0 and r.stdout == b"ok\n":
                ok[0] += 1
            else:
                failed[0] += 1

    worker = threading.Thread(target=legit)
    worker.start()
    sent = 0
    try:
        for i in range(rounds):
            for n, connect in enumerate((
                    lambda: _unix(host.cli),
                    lambda: socket.create_connection(("127.0.0.1", host.tcp_port)),
                    lambda: socket.create_connection(("127.0.0.1", host.web_port)),
                    lambda: socket.create_connection(("127.0.0.1", host.server_port)),
                    lambda: socket.create_connection(("127.0.0.1", host.discovery_port)))):
                batch = payloads(i * 10 + n)
                blast(connect, batch)
                sent += len(batch)
    finally:
        stop.set()
        worker.join()
    after = sum(host.client("shell", host.target, "-i", host.config_path, "--", "true").returncode == 0
                for _ in range(5))
    return sent, ok[0], failed[0], after


def strangers(host):
    """Every entry point, as a key that is not whitelisted: processes spawned."""
    import subprocess
    import urllib.error
    import urllib.request

    from skypty.keys import generate_keypair
    from tests.hosts import CLIENT, env

    before = {pid for pid, _ in host.children()}
    spawned = set()
    _pk, sk = generate_keypair()
    attempts = {}
    r = host.client("shell", host.target, "--sk", sk.hex(), "--", "touch", "/tmp/stranger-was-here")
    attempts["Noise TCP: shell -- cmd"] = r.returncode
    r = host.client("shell", host.target, "--sk", sk.hex(), "-t", "--", "sh")
    attempts["Noise TCP: shell -t"] = r.returncode
    for path in ("/pty", "/pty?token=wrong", f"/pty/{host.pk}"):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{host.web_port}{path}", timeout=5)
            attempts[f"web {path}"] = 200
        except urllib.error.HTTPError as e:
            attempts[f"web {path}"] = e.code
    out = subprocess.run([sys.executable, "-m", "tests.dmsg_http_probe", f"http://127.0.0.1:{host.discovery_port}",
                          sk.hex(), host.pk, "/pty"], capture_output=True, timeout=60, env=env(),
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    attempts["web over dmsg port 80"] = out.stdout.decode().strip()
    out = subprocess.run(CLIENT + ["fs", "pipe", host.target, "--sk", sk.hex()], input=b"\x00\x00\x00\x05\x01\x00\x00\x00\x03",
                         capture_output=True, timeout=30, env=env())
    attempts["sftp over Noise TCP"] = out.returncode
    spawned |= {pid for pid, _ in host.children()} - before
    return attempts, len(spawned)


def soak(host, execs, shells, rounds):
    from skypty.client.rpc import BlockingRPC, request_service
    from skypty.client.transport import connect_noise
    from skypty.keys import PublicKey, SecretKey
    from skypty.wire import types as T

    sk, pk = SecretKey.from_hex(host.data["sk"]), PublicKey.from_hex(host.pk)

    def channel():
        c = connect_noise("127.0.0.1", host.tcp_port, pk, sk)
        return c, BlockingRPC(c, request_service(c, "dmsgpty/pty"))

    def snapshot():
        return host.fd_count(), rss_kib(host.proc.pid), len(host.children()), \
            sum(1 for _, state in host.children() if state == "Z")

    wait_for(host.joined_dmsg, what="the host's dmsg session (its sockets belong in the baseline)")
    c, rpc = channel()  # warm up
    rpc.call("pty.Exec", T.CommandExecReq.cls(name="true"), T.CommandExecReq, T.CommandExecResult)
    c.close()
    time.sleep(0.5)  # a benchmark, not a test: let the warm-up connection's teardown finish
    base = snapshot()
    t = time.monotonic()
    for _ in range(execs):
        c, rpc = channel()
        rpc.call("pty.Exec", T.CommandExecReq.cls(name="true"), T.CommandExecReq, T.CommandExecResult)
        c.close()
    exec_time = time.monotonic() - t
    wait_for(lambda: snapshot()[0] <= base[0], timeout=30, what="fds to settle")
    after_execs = snapshot()
    cycles = []
    for _ in range(rounds):  # RSS must level off, not grow with every round
        open_ = []
        for _ in range(shells):
            c, rpc = channel()
            rpc.call("pty.Start", T.CommandReq.cls(name="sh"), T.CommandReq, T.EMPTY)
            open_.append(c)
        during = snapshot()
        for c in open_:
            c.close()
        wait_for(lambda: snapshot()[2] <= base[2] and snapshot()[0] <= base[0], timeout=60, what="shells to end")
        cycles.append((during, snapshot()))
    return base, after_execs, exec_time, cycles


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hold", type=float, default=40, help="seconds to watch idle/trickling connections")
    ap.add_argument("--per-port", type=int, default=100, help="idle and trickling connections per port each")
    ap.add_argument("--execs", type=int, default=2000)
    ap.add_argument("--shells", type=int, default=200)
    ap.add_argument("--hostile-rounds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of opening and closing --shells shells")
    args = ap.parse_args()
    host = Host(tempfile.mkdtemp(prefix="skypty-rel-"), "rel").start()
    try:
        print(f"## Idle and trickling connections ({args.per_port} of each per port, watched {args.hold:.0f} s)\n")
        print("| port | kind | opened | still open at the end | closed after |")
        print("|---|---|---|---|---|")
        for row in hold(host, args.hold, args.per_port):
            print("| {} | {} | {} | {} | {} |".format(*row))
        print(f"\nhost alive afterwards: {host.proc.poll() is None}")
        r = host.client("shell", host.target, "-i", host.config_path, "--", "echo", "ok")
        print(f"legitimate exec afterwards: exit {r.returncode}, {r.stdout!r}\n")
        sent, ok, failed, after = hostile(host, args.hostile_rounds)
        print("## Hostile input while a legitimate client works\n")
        print(f"{sent} garbage connections (random, truncated, oversized, bad request lines) across the "
              f"control socket, Noise TCP, web, dmsg server and discovery ports; meanwhile {ok} execs "
              f"succeeded and {failed} failed; afterwards {after}/5 succeeded; host alive: "
              f"{host.proc.poll() is None}\n")
        attempts, spawned = strangers(host)
        print("## Strangers on every entry point\n")
        print("| attempt | answer |")
        print("|---|---|")
        for k, v in attempts.items():
            print(f"| {k} | {v} |")
        print(f"\nprocesses spawned for strangers: {spawned}\n")
        base, after_execs, exec_time, cycles = soak(host, args.execs, args.shells, args.rounds)
        print("## Soak\n")
        print("| moment | fds | RSS KiB | children | zombies |")
        print("|---|---|---|---|---|")
        rows = [("baseline", base), (f"after {args.execs} execs ({exec_time:.1f} s)", after_execs)]
        for i, (during, after) in enumerate(cycles, 1):
            rows += [(f"round {i}: {args.shells} shells open", during), (f"round {i}: after closing them", after)]
        for label, snap in rows:
            print("| {} | {} | {} | {} | {} |".format(label, *snap))
    finally:
        host.stop()


if __name__ == "__main__":
    main()

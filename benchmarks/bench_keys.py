"""Keystroke echo latency: skypty vs `ssh -tt` (and mosh), side by side.

    python3 benchmarks/bench_keys.py [--keys 400] [--rounds 3]
    python3 benchmarks/bench_keys.py --rtt 200 [--keys 100] [--rounds 1]

With --rtt MS every client goes through a relay on loopback that delays
each direction by MS/2 (tests/delayrelay.py: TCP for skypty and ssh, UDP
for mosh), and the runs are skypty with prediction (the default, auto),
skypty --predict never, ssh -tt and, where installed, mosh (its own
prediction, default adaptive).  A key counts as echoed when the local
terminal (pyte, fed everything the client wrote) shows it where the cursor
was: what the user sees, predicted or not.

Starts a throwaway sshd (bench_vs_ssh.start_sshd) and a throwaway skypty
host, opens an interactive `cat` through each (the client runs in a pty of
its own, driven by pexpect, as a person's terminal would), then types one
character at a time and times how long its echo takes to come back.
Rounds alternate between the two; the figure is the median (p50) and p90
over every key of every round.

Also printed: CPU time per key (utime+stime from /proc) of the client
process and of the server side (the skypty host process, or sshd's
per-connection processes; the remote `cat` included in both).
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_vs_ssh import CLIENT, start_sshd  # noqa: E402
from tests.hosts import Host, env  # noqa: E402

PROBE = "0"  # never among the timed keys (and not an escape character)


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def descendants(root):
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    out, changed = {root}, True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in out and pid not in out:
                out.add(pid)
                changed = True
    return out


def echo_times(argv, keys, server_root, screen=False):
    """-> (seconds per key, client CPU s, server CPU s)."""
    import pexpect

    if screen:
        return screen_echo_times(argv, keys, server_root)

    # echo=False: our own pty must not echo, or the first echo we see may be
    # the local line discipline's (while the client is still connecting),
    # not the remote end's.  ssh copies that mode to the remote pty, hence
    # the remote `stty echo` (REMOTE) for every client alike.
    child = pexpect.spawn(argv[0], argv[1:], env=env(), timeout=20, echo=False)
    child.delaybeforesend = None  # pexpect sleeps 50 ms before each send by default,
    child.delayafterread = None  # and 0.1 ms (0.2 with timer slack) after each read, inside the timing
    try:
        deadline = time.monotonic() + 20
        while True:  # until the remote cat is up and echoing (early keys may be flushed by a mode switch)
            child.send(PROBE)
            if child.expect([pexpect.TIMEOUT, PROBE], timeout=0.5) == 1:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"no echo from {argv}")
        time.sleep(0.3)  # a benchmark, not a test: let any late echoes of the probe arrive
        try:
            child.read_nonblocking(65536, timeout=0.1)
        except pexpect.TIMEOUT:
            pass
        clients = {child.pid}
        servers = descendants(server_root) - ({server_root} if server_root != HOST_ROOT[0] else set())
        c0, s0 = cpu_seconds(clients), cpu_seconds(servers)
        times = []
        for i in range(keys):
            key = "abcdefghijklmnopqrstuvwxyz"[i % 26]
            start = time.perf_counter()
            child.send(key)
            child.expect_exact(key)
            times.append(time.perf_counter() - start)
        c1, s1 = cpu_seconds(clients), cpu_seconds(servers)
        return times, c1 - c0, s1 - s0
    finally:
        child.sendcontrol("c")
        child.close(force=True)


def screen_echo_times(argv, keys, server_root, rows=24, cols=80):
    """echo_times, judged on a terminal screen (pyte): the key's cell shows it."""
    import pexpect
    import pyte

    screen = pyte.Screen(cols, rows)
    stream = pyte.ByteStream(screen)
    child = pexpect.spawn(argv[0], argv[1:], env=env(), timeout=20, echo=False, dimensions=(rows, cols))
    child.delaybeforesend = None

    def pump(timeout):
        try:
            stream.feed(child.read_nonblocking(65536, timeout=timeout))
        except pexpect.TIMEOUT:
            pass

    def shows(text):
        return any(text in line for line in screen.display)

    try:
        deadline = time.monotonic() + 30
        while not shows(PROBE):
            child.send(PROBE)
            end = time.monotonic() + 0.5
            while time.monotonic() < end and not shows(PROBE):
                pump(0.05)
            if time.monotonic() > deadline:
                raise SystemExit(f"no echo from {argv}: {screen.display}")
        end = time.monotonic() + 1.0  # a benchmark: let late echoes of the probes arrive
        while time.monotonic() < end:
            pump(0.05)
        clients = {child.pid} | descendants(child.pid)
        servers = descendants(server_root) - ({server_root} if server_root != HOST_ROOT[0] else set())
        c0, s0 = cpu_seconds(clients), cpu_seconds(servers)
        times = []
        x0, y0 = screen.cursor.x, screen.cursor.y
        for i in range(keys):
            key = "abcdefghijklmnopqrstuvwxyz"[i % 26]
            # where the i-th key lands (counted: clients differ in where they
            # leave the cursor at the right margin)
            y, x = divmod(y0 * cols + x0 + i, cols)
            if y >= rows - 1:
                break  # the screen is full: enough keys
            start = time.perf_counter()
            child.send(key)
            while screen.buffer[y][x].data != key:
                if time.perf_counter() - start > 10:
                    raise SystemExit(f"{key!r} never showed at {x},{y}: {screen.display}")
                pump(1.0)
            times.append(time.perf_counter() - start)
        c1, s1 = cpu_seconds(clients), cpu_seconds(servers)
        return times, c1 - c0, s1 - s0
    finally:
        child.sendcontrol("c")
        child.close(force=True)


def cat_seconds(argv, path, size):
    """Seconds from `cat PATH` typed (after a few keys, so prediction is on)
    until all of it and the next prompt are on the terminal."""
    import pexpect

    child = pexpect.spawn(argv[0], argv[1:], env=env(), timeout=60, echo=False, dimensions=(24, 80))
    child.delaybeforesend = None
    try:
        child.expect_exact(CAT_PROMPT)
        for key in "echo warm":
            child.send(key)
            time.sleep(0.05)  # typing, so that predictions are on when the flood comes
        child.send("\r")
        child.expect_exact("\r\nwarm")
        child.expect_exact(CAT_PROMPT)
        child.send(f"cat {path}; echo END-OF-CAT\r")
        start = time.perf_counter()
        child.expect_exact("\r\nEND-OF-CAT", timeout=120)
        child.expect_exact(CAT_PROMPT)
        return time.perf_counter() - start
    finally:
        child.close(force=True)


CAT_PROMPT = "CAT$ "


def start_mosh(remote, rtt):
    """mosh-server running *remote*, reached through a delaying UDP relay;
    -> (argv of the client, the server's pid, the relay)."""
    import re
    import subprocess

    from tests.delayrelay import DelayUDPRelay

    out = subprocess.run(["mosh-server", "new", "-i", "127.0.0.1", "--", "sh", "-c", remote],
                         capture_output=True, text=True, timeout=20, env=dict(env(), LANG="C.UTF-8")).stdout
    match = re.search(r"MOSH CONNECT (\d+) (\S+)", out)
    if not match:
        raise SystemExit(f"mosh-server did not start: {out}")
    port, key = match.groups()
    relay = DelayUDPRelay(int(port), rtt)
    server = None
    for pid in os.listdir("/proc"):  # the detached mosh-server: ours, the newest
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[:1] == [b"mosh-server"] and (server is None or int(pid) > server):
                        server = int(pid)
            except OSError:
                continue
    argv = ["env", f"MOSH_KEY={key}", "LANG=C.UTF-8", "mosh-client", "127.0.0.1", str(relay.port)]
    return argv, server, relay


REMOTE = "stty echo; exec cat"
HOST_ROOT = [None]  # the skypty host's pid: its own CPU counts (sshd's listener does not)


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=None, help="keys typed per round (400; 100 with --rtt)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (3; 1 with --rtt)")
    ap.add_argument("--rtt", type=float, default=0, metavar="MS",
                    help="delay every client's path by this round trip (a relay on loopback)")
    args = ap.parse_args()
    if args.rtt:
        return main_rtt(args)
    args.keys, args.rounds = args.keys or 400, args.rounds or 3
    tmp = tempfile.mkdtemp(prefix="skypty-keys-")
    sshd, ssh = start_sshd(tmp)
    host = Host(tmp, "skypty").start()
    HOST_ROOT[0] = host.proc.pid
    runs = {
        "skypty shell -t (Noise TCP)": ([CLIENT, "shell", "-t", host.target, "-i", host.config_path,
                                         "--", "sh", "-c", REMOTE], host.proc.pid),
        "skypty shell -t --predict never": ([CLIENT, "shell", "-t", host.target, "-i", host.config_path,
                                             "--predict", "never", "--", "sh", "-c", REMOTE], host.proc.pid),
        "skypty start (control socket)": ([CLIENT, "start", "--cliaddr", host.cli, "-i", host.config_path,
                                           "--", "sh", "-c", REMOTE], host.proc.pid),
        "ssh -tt": (ssh[:1] + ["-tt"] + ssh[1:] + [REMOTE], sshd.pid),
    }
    try:
        samples = {name: [] for name in runs}
        cpu = {name: [0.0, 0.0] for name in runs}
        for _ in range(args.rounds):
            for name, (argv, root) in runs.items():
                times, client_cpu, server_cpu = echo_times(argv, args.keys, root)
                samples[name] += times
                cpu[name][0] += client_cpu
                cpu[name][1] += server_cpu
        n = args.keys * args.rounds
        print(f"keystroke echo through `cat`, {args.keys} keys x {args.rounds} alternating rounds:")
        for name, values in samples.items():
            print(f"  {name:<31}: p50 {statistics.median(values) * 1000:6.3f} ms   "
                  f"p90 {pct(values, 0.9) * 1000:6.3f} ms   CPU/key client {cpu[name][0] / n * 1e6:5.0f} us, "
                  f"server {cpu[name][1] / n * 1e6:5.0f} us")
        base = statistics.median(samples["ssh -tt"])
        for name in list(runs)[:3]:
            print(f"  ratio {name} / ssh -tt (p50): {statistics.median(samples[name]) / base:.2f}x (target <= 1.0x)")
    finally:
        host.stop()
        sshd.terminate()
        sshd.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main_rtt(args):
    from tests.delayrelay import DelayRelay

    keys, rounds, rtt = args.keys or 100, args.rounds or 1, args.rtt / 1000
    tmp = tempfile.mkdtemp(prefix="skypty-keys-")
    sshd, ssh = start_sshd(tmp)
    host = Host(tmp, "skypty").start()
    HOST_ROOT[0] = host.proc.pid
    skypty_relay = DelayRelay(host.tcp_port, rtt)
    ssh_port = int(ssh[ssh.index("-p") + 1])
    ssh_relay = DelayRelay(ssh_port, rtt)
    slow_ssh = list(ssh)
    slow_ssh[slow_ssh.index("-p") + 1] = str(ssh_relay.port)
    target = f"{host.pk}@127.0.0.1:{skypty_relay.port}"
    skypty = [CLIENT, "shell", "-t", target, "-i", host.config_path]
    runs = {
        "skypty shell, prediction (auto)": (skypty + ["--", "sh", "-c", REMOTE], host.proc.pid),
        "skypty shell --predict never": (skypty + ["--predict", "never", "--", "sh", "-c", REMOTE],
                                         host.proc.pid),
        "ssh -tt": (slow_ssh[:1] + ["-tt"] + slow_ssh[1:] + [REMOTE], sshd.pid),
    }
    mosh = shutil.which("mosh-client") and shutil.which("mosh-server")
    relays = [skypty_relay, ssh_relay]
    try:
        samples = {name: [] for name in runs}
        if mosh:
            samples["mosh (its prediction)"] = []
        for _ in range(rounds):
            for name, (argv, root) in runs.items():
                samples[name] += screen_echo_times(argv, keys, root)[0]
            if mosh:
                argv, server, relay = start_mosh(REMOTE, rtt)
                relays.append(relay)
                try:
                    samples["mosh (its prediction)"] += screen_echo_times(argv, keys, server or 0)[0]
                finally:
                    if server:
                        try:
                            os.kill(server, 15)
                        except ProcessLookupError:
                            pass
        path = os.path.join(tmp, "2mb.txt")
        with open(path, "wb") as f:
            f.write(b"".join(b"%06d the quick brown fox jumps over the lazy dog, pack my box with jugs\n" % i
                             for i in range(26000))[:2 * 1024 * 1024])
        shell = ["--", "env", f"PS1={CAT_PROMPT}", "sh"]
        cats = {"prediction (auto)": [], "--predict never": []}
        for _ in range(rounds):
            cats["prediction (auto)"].append(cat_seconds(skypty + shell, path, 2 << 20))
            cats["--predict never"].append(cat_seconds(skypty + ["--predict", "never"] + shell, path, 2 << 20))
        print(f"keystroke echo through `cat` at {args.rtt:g} ms RTT (delaying relay on loopback), "
              f"{keys} keys x {rounds} round(s), judged on the terminal's screen:")
        for name, values in samples.items():
            fast = sum(v < 0.005 for v in values) / len(values) * 100
            print(f"  {name:<34}: p50 {statistics.median(values) * 1000:7.2f} ms   "
                  f"p95 {pct(values, 0.95) * 1000:7.2f} ms   shown within 5 ms: {fast:3.0f}%")
        if not mosh:
            print("  (mosh not installed)")
        print(f"a 2 MB `cat` on the same path, to the next prompt (median of {rounds}):")
        for name, values in cats.items():
            print(f"  skypty shell, {name:<20}: {statistics.median(values):6.2f} s")
    finally:
        for relay in relays:
            relay.close()
        host.stop()
        sshd.terminate()
        sshd.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

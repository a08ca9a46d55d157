"""Keystroke echo latency: skypty vs `ssh -tt`, on loopback, side by side.

    python3 benchmarks/bench_keys.py [--keys 400] [--rounds 3]

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


def echo_times(argv, keys, server_root):
    """-> (seconds per key, client CPU s, server CPU s)."""
    import pexpect

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


REMOTE = "stty echo; exec cat"
HOST_ROOT = [None]  # the skypty host's pid: its own CPU counts (sshd's listener does not)


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=400, help="keys typed per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="skypty-keys-")
    sshd, ssh = start_sshd(tmp)
    host = Host(tmp, "skypty").start()
    HOST_ROOT[0] = host.proc.pid
    runs = {
        "skypty shell -t (Noise TCP)": ([CLIENT, "shell", "-t", host.target, "-i", host.config_path,
                                         "--", "sh", "-c", REMOTE], host.proc.pid),
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
        for name in list(runs)[:2]:
            print(f"  ratio {name} / ssh -tt (p50): {statistics.median(samples[name]) / base:.2f}x (target <= 1.0x)")
    finally:
        host.stop()
        sshd.terminate()
        sshd.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

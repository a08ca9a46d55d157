"""Keystroke echo latency: skypty vs `ssh -tt`, on loopback, side by side.

    python3 benchmarks/bench_keys.py [--keys 400] [--rounds 3]

Starts a throwaway sshd (bench_vs_ssh.start_sshd) and a throwaway skypty
host, opens an interactive `cat` through each (the client runs in a pty of
its own, driven by pexpect, as a person's terminal would), then types one
character at a time and times how long its echo takes to come back.
Rounds alternate between the two; the figure is the median (p50) and p90
over every key of every round.
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


def echo_times(argv, keys):
    import pexpect

    child = pexpect.spawn(argv[0], argv[1:], env=env(), timeout=20)
    child.delaybeforesend = None  # pexpect sleeps 50 ms before each send by default
    try:
        deadline = time.monotonic() + 20
        while True:  # until the remote cat is up and echoing (early keys may be flushed by a mode switch)
            child.send("x")
            if child.expect([pexpect.TIMEOUT, "x"], timeout=0.5) == 1:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"no echo from {argv}")
        time.sleep(0.3)  # a benchmark, not a test: let any late echoes of the probe arrive
        try:
            child.read_nonblocking(65536, timeout=0.1)
        except pexpect.TIMEOUT:
            pass
        times = []
        for i in range(keys):
            key = "abcdefghijklmnopqrstuvwxyz"[i % 26]
            start = time.perf_counter()
            child.send(key)
            child.expect_exact(key)
            times.append(time.perf_counter() - start)
        return times
    finally:
        child.sendcontrol("c")
        child.close(force=True)


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
    runs = {
        "skypty shell -t (Noise TCP)": [CLIENT, "shell", "-t", host.target, "-i", host.config_path, "--", "cat"],
        "skypty start (control socket)": [CLIENT, "start", "--cliaddr", host.cli, "-i", host.config_path,
                                          "--", "cat"],
        "ssh -tt": ssh[:1] + ["-tt"] + ssh[1:] + ["cat"],
    }
    try:
        samples = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, argv in runs.items():
                samples[name] += echo_times(argv, args.keys)
        print(f"keystroke echo through `cat`, {args.keys} keys x {args.rounds} alternating rounds:")
        for name, values in samples.items():
            print(f"  {name:<31}: p50 {statistics.median(values) * 1000:6.3f} ms   p90 {pct(values, 0.9) * 1000:6.3f} ms")
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

"""Exec latency on a host holding N idle shells vs an idle host, and host RSS per idle session.

    python3 benchmarks/bench_sessions.py [--sessions 2000] [--runs 40]

Starts two throwaway `twistd skypty` hosts on loopback.  On the loaded one,
N connections each start an idle `sh` on a pty (pty.Start) and stay open;
the idle one holds nothing.  Then `pty.Exec true` is timed alternately on
each host (connect to the control socket, request the pty service, the RPC,
its answer), in this process with the client's own blocking code, so the
figure is the host's work, not a Python start-up.  Prints medians, the
90th percentile, the ratio loaded/idle, and the loaded host's RSS growth
divided by N (the shells' own memory is theirs, not the host's).
"""

import argparse
import os
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from skypty.wire import requestline  # noqa: E402
from skypty.wire.rpc import RPCClientConnection  # noqa: E402
from skypty.wire import types as T  # noqa: E402
from tests.hosts import Host  # noqa: E402


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Channel:
    """A plain blocking control-socket connection with the sans-I/O RPC core
    (the client's own transport polls with select(), which stops at fd 1024;
    this process holds thousands)."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.sock.sendall(requestline.encode_request(requestline.PTY))
        answer = self.sock.recv(65536)
        if answer[:1] != requestline.ACCEPT:
            raise RuntimeError(f"the host refused the pty service: {answer!r}")
        self.core = RPCClientConnection()
        self.results = {}
        if answer[1:]:
            self._feed(answer[1:])

    def _feed(self, data):
        for seq, value in self.core.data_received(data):
            self.results[seq] = value

    def call(self, method, arg, arg_type, reply_type):
        seq, data = self.core.start_call(method, arg, arg_type, reply_type)
        self.sock.sendall(data)
        while seq not in self.results:
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError("the host closed the connection")
            self._feed(data)
        value = self.results.pop(seq)
        if isinstance(value, Exception):
            raise value
        return value

    def close(self):
        self.sock.close()


def open_pty(host):
    channel = Channel(host.cli)
    return channel, channel


def start_idle_shell(host):
    channel, rpc = open_pty(host)
    req = T.CommandReq.cls(name="sh", arg=[], size=T.WinSize.cls(rows=24, cols=80),
                           env=["TERM=xterm"])
    rpc.call("pty.Start", req, T.CommandReq, T.EMPTY)
    return channel


def timed_exec(host):
    start = time.perf_counter()
    channel, rpc = open_pty(host)
    try:
        req = T.CommandExecReq.cls(name="true", arg=[], env=[], stdin=b"", timeout_ms=10_000)
        result = rpc.call("pty.Exec", req, T.CommandExecReq, T.CommandExecResult)
    finally:
        channel.close()
    assert result.exit_code == 0, result
    return time.perf_counter() - start


def settle(host, seconds=1.0):
    """Let the host finish what the shells printed (prompts) before timing."""
    deadline = time.monotonic() + seconds
    before = None
    while time.monotonic() < deadline:
        now = rss_kib(host.proc.pid)
        if now == before:
            break
        before = now
        time.sleep(0.2)


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=40, help="timed execs on each host")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 3 * args.sessions + 256  # connection, pty master, exit watcher per session
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))  # the hosts inherit it
    tmp = tempfile.mkdtemp(prefix="skypty-bench-sessions-")
    idle, loaded = Host(tmp, "idle").start(), Host(tmp, "loaded").start()
    channels = []
    try:
        for _ in range(3):  # warm both: first-use imports and allocations are not per session
            timed_exec(idle)
            timed_exec(loaded)
        base_rss = rss_kib(loaded.proc.pid)
        opened = time.perf_counter()
        for i in range(args.sessions):
            channels.append(start_idle_shell(loaded))
        opened = time.perf_counter() - opened
        settle(loaded)
        per_session = (rss_kib(loaded.proc.pid) - base_rss) / args.sessions
        times = {"idle": [], "loaded": []}
        cpu = {"idle": -cpu_seconds(idle.proc.pid), "loaded": -cpu_seconds(loaded.proc.pid)}
        for _ in range(args.runs):  # alternate, so drift hits both alike
            times["idle"].append(timed_exec(idle))
            times["loaded"].append(timed_exec(loaded))
        cpu["idle"] += cpu_seconds(idle.proc.pid)
        cpu["loaded"] += cpu_seconds(loaded.proc.pid)
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        p90 = {k: percentile(v, 0.9) * 1000 for k, v in times.items()}
        print(f"{args.sessions} idle shells opened in {opened:.1f} s "
              f"({opened / args.sessions * 1000:.1f} ms each)")
        print(f"pty.Exec `true` (connect + request + RPC), {args.runs} alternating runs (ms):")
        print(f"  {'':<28}{'median':>8}{'p90':>8}{'max':>8}{'host CPU':>10}")
        for k, label in (("idle", "idle host"), ("loaded", f"host with {args.sessions} shells")):
            print(f"  {label:<28}{med[k]:8.1f}{p90[k]:8.1f}{max(times[k]) * 1000:8.1f}"
                  f"{cpu[k] / args.runs * 1000:10.2f}")
        print(f"  ratio loaded/idle: median {med['loaded'] / med['idle']:.2f}x, "
              f"p90 {p90['loaded'] / p90['idle']:.2f}x (target <= 1.5x)")
        print(f"host RSS per idle session: {per_session:.1f} KiB (target <= 100 KB)")
    finally:
        for channel in channels:
            channel.close()
        idle.stop()
        loaded.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Over dmsg: exec latency through the local host, and streaming throughput.

    python3 benchmarks/bench_dmsg.py [--runs 15] [--mib 64]

Starts `twistd skypty-dmsg` and two hosts A and B (B whitelists A), then
times `skypty-client exec B -- true` through A's control socket (A dials B
over dmsg) and streams N MiB from B through `start B -- head -c N /dev/zero`.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.hosts import env, wait_for  # noqa: E402
from tests.test_dmsg_e2e import DmsgNetwork, dmsg_host  # noqa: E402

CLIENT = os.path.join(os.path.dirname(sys.executable), "skypty-client")


def timed(argv):
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env())
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--mib", type=int, default=64)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="skypty-dmsg-bench-")
    network = DmsgNetwork(tmp).start()
    a = dmsg_host(tmp, "a", network)
    b = dmsg_host(tmp, "b", network, whitelist=[a.pk])
    try:
        a.start()
        b.start()
        wait_for(lambda: network.joined(a) and network.joined(b), what="both hosts to join")
        exec_argv = [CLIENT, "exec", b.pk, "--cliaddr", a.cli, "--", "true"]
        times = [timed(exec_argv) for _ in range(args.runs)]
        print(f"exec `true` on B through A's control socket over dmsg, median of {args.runs}: "
              f"{statistics.median(times) * 1000:.1f} ms")
        n = args.mib * 1024 * 1024
        stream_argv = [CLIENT, "start", b.pk, "--cliaddr", a.cli, "--", "head", "-c", str(n), "/dev/zero"]
        secs = statistics.median(timed(stream_argv) for _ in range(3))
        print(f"streaming {args.mib} MiB from B over dmsg (pty), median of 3: {n / secs / 1e6:.1f} MB/s")
    finally:
        for h in (a, b):
            h.stop()
        network.stop()


if __name__ == "__main__":
    main()

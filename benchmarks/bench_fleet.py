"""Operating many hosts: fleet exec, and cp vs scp, on loopback.

    python3 benchmarks/bench_fleet.py [--hosts 20] [--runs 5] [--mib 256] [--cp-runs 3]

Fleet: starts --hosts throwaway `twistd skypty` hosts (the first runs the
dmsg network, the others join it and whitelist the first), names them in a
throwaway hosts.toml, then times (whole client process, wall clock, median
of --runs, alternating):
  * `exec ONE -- true` on one host, directly over Noise TCP;
  * `exec @tcp -- true` on every host, directly over Noise TCP;
  * `exec @dmsg -- true` on every host but the first, through the first
    host's control socket over dmsg.

cp: a random --mib MiB file, uploaded and downloaded (timed up to the
client's exit, median of --cp-runs) with `skypty-client cp` over Noise TCP
and with `scp` to a throwaway sshd (its own host and user keys, as
bench_vs_ssh.py starts it; OpenSSH 9's scp speaks SFTP).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_vs_ssh import start_sshd  # noqa: E402
from tests.hosts import Host, env, wait_for  # noqa: E402

CLIENT = os.path.join(os.path.dirname(sys.executable), "skypty-client")


def timed(argv, environ):
    start = time.perf_counter()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       env=environ)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}... failed: {r.stderr.decode()[-2000:]}")
    return elapsed


def start_hosts(tmp, count):
    first = Host(tmp, "h00").start()
    hosts = [first]
    for i in range(1, count):
        h = Host(tmp, f"h{i:02d}", embedded=False, discovery_port=first.discovery_port)
        h.data["pty"]["whitelist"] = [first.pk]
        h.write_config()
        hosts.append(h.start())
    return hosts


def fleet(args, tmp):
    hosts = start_hosts(tmp, args.hosts)
    environ = env()
    environ["XDG_CONFIG_HOME"] = os.path.join(tmp, "xdg")
    first = hosts[0]
    try:
        for i, h in enumerate(hosts):
            for argv in (["hosts", "add", f"t{i:02d}", h.pk, "--addr", f"127.0.0.1:{h.tcp_port}", "--group", "tcp"],
                         ["hosts", "add", f"d{i:02d}", h.pk, "--transport", "dmsg"]
                         + (["--group", "dmsg"] if i else [])):
                subprocess.run([CLIENT] + argv, check=True, env=environ, stdout=subprocess.DEVNULL)
        base = [CLIENT, "exec", "-i", first.config_path]
        wait_for(lambda: subprocess.run(base + ["@dmsg", "--", "true"], env=environ,
                                        capture_output=True).returncode == 0,
                 timeout=120, what="every host reachable over dmsg")
        rows = {"1 host (Noise TCP)": base + ["t00", "--", "true"],
                f"{args.hosts} hosts (Noise TCP)": base + ["@tcp", "--", "true"],
                f"{args.hosts - 1} hosts (dmsg via the local host)": base + ["@dmsg", "--", "true"]}
        times = {name: [] for name in rows}
        for _ in range(args.runs):
            for name, argv in rows.items():
                times[name].append(timed(argv, environ))
        print(f"fleet exec `true`, whole client process, median of {args.runs} alternating runs:")
        medians = {name: statistics.median(t) for name, t in times.items()}
        for name, m in medians.items():
            print(f"  {name:<36}: {m * 1000:7.1f} ms")
        one, many = medians["1 host (Noise TCP)"], medians[f"{args.hosts} hosts (Noise TCP)"]
        print(f"  {args.hosts} hosts / 1 host (Noise TCP)        : {many / one:7.2f}x "
              f"(one at a time: about {args.hosts}x)")
    finally:
        for h in hosts:
            h.stop()


def copy(args, tmp):
    data = os.path.join(tmp, "data")
    os.makedirs(data)
    src = os.path.join(tmp, "src.bin")
    with open(src, "wb") as f:
        for _ in range(args.mib):
            f.write(os.urandom(1024 * 1024))
    sshd, ssh = start_sshd(tmp)
    port, key = ssh[2], ssh[4]
    host = Host(tmp, "cp").start()
    environ = env()
    scp = ["scp", "-q", "-P", port, "-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
    sky = [CLIENT, "cp", "-q", "-i", host.config_path]
    up, down = os.path.join(data, "up.bin"), os.path.join(tmp, "down.bin")
    rows = {
        "skypty-client cp upload": sky + [src, f"{host.target}:{up}"],
        "scp upload": scp + [src, f"root@127.0.0.1:{up}"],
        "skypty-client cp download": sky + [f"{host.target}:{src}", down],
        "scp download": scp + [f"root@127.0.0.1:{src}", down],
    }
    try:
        times = {name: [] for name in rows}
        for _ in range(args.cp_runs):
            for name, argv in rows.items():
                times[name].append(timed(argv, environ))
                out = up if "upload" in name else down
                assert os.path.getsize(out) == args.mib * 1024 * 1024, name
                os.unlink(out)
        n = args.mib * 1024 * 1024
        print(f"copy a {args.mib} MiB file on loopback, whole client process, median of {args.cp_runs} (MB/s):")
        rates = {name: n / statistics.median(t) / 1e6 for name, t in times.items()}
        for name, rate in rates.items():
            print(f"  {name:<26}: {rate:7.1f} MB/s")
        for way in ("upload", "download"):
            print(f"  ratio skypty/scp, {way:<8}  : {rates[f'skypty-client cp {way}'] / rates[f'scp {way}']:7.2f}x")
    finally:
        host.stop()
        sshd.terminate()
        sshd.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--cp-runs", type=int, default=3)
    ap.add_argument("--only", choices=("fleet", "cp"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="skypty-bench-fleet-")
    try:
        if args.only in (None, "fleet"):
            fleet(args, tmp)
        if args.only in (None, "cp"):
            copy(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

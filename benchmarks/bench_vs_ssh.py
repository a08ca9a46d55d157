"""skypty vs OpenSSH on loopback, side by side in one run.

    python3 benchmarks/bench_vs_ssh.py [--runs 15] [--mib 256]

Starts a throwaway sshd (its own host key, user key and config in a temp
dir) and a throwaway `twistd skypty` host, then alternates:
  * exec latency: `skypty-client shell pk@127.0.0.1:PORT -- true` vs
    `ssh -p PORT 127.0.0.1 true` (whole process, wall clock, median);
  * streaming: N MiB of /dev/zero through each, on a pty (`-t`) and, for
    ssh, also without one (MB/s, median of 3).
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
from tests.hosts import Host, free_port  # noqa: E402

CLIENT = os.path.join(os.path.dirname(sys.executable), "skypty-client")


def start_sshd(tmp):
    port = free_port()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{tmp}/host_key"], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{tmp}/user_key"], check=True)
    shutil.copy(f"{tmp}/user_key.pub", f"{tmp}/authorized_keys")
    with open(f"{tmp}/sshd_config", "w") as f:
        f.write(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp}/host_key\n"
                f"AuthorizedKeysFile {tmp}/authorized_keys\nPasswordAuthentication no\n"
                "UsePAM no\nStrictModes no\nPidFile none\nPermitRootLogin yes\n"
                "Subsystem sftp /usr/lib/openssh/sftp-server\n")
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", f"{tmp}/sshd_config"],
                            stderr=subprocess.DEVNULL)
    ssh = ["ssh", "-p", str(port), "-i", f"{tmp}/user_key", "-o", "StrictHostKeyChecking=no",
           "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "127.0.0.1"]
    deadline = time.monotonic() + 10
    while subprocess.run(ssh + ["true"], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit("sshd did not come up")
        time.sleep(0.05)
    return proc, ssh


def timed(argv, **kw):
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--mib", type=int, default=256)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="skypty-bench-")
    sshd, ssh = start_sshd(tmp)
    host = Host(tmp, "skypty").start()
    sky = [CLIENT, "shell", host.target, "-i", host.config_path]
    try:
        sky_t, ssh_t = [], []
        for _ in range(args.runs):
            sky_t.append(timed(sky + ["--", "true"]))
            ssh_t.append(timed(ssh + ["true"]))
        s, o = statistics.median(sky_t), statistics.median(ssh_t)
        print(f"exec `true`, median of {args.runs} alternating runs:")
        print(f"  skypty-client shell -- true : {s * 1000:7.1f} ms")
        print(f"  ssh 127.0.0.1 true          : {o * 1000:7.1f} ms")
        print(f"  ratio skypty/ssh            : {s / o:7.2f}x (target <= 0.5x)")
        n = args.mib * 1024 * 1024
        cmd = ["head", "-c", str(n), "/dev/zero"]
        rows = {"skypty -t (pty)": sky[:2] + ["-t"] + sky[2:] + ["--"] + cmd,
                "ssh -tt (pty)": ssh[:1] + ["-tt"] + ssh[1:] + cmd,
                "ssh (no pty)": ssh + cmd}
        print(f"streaming {args.mib} MiB of /dev/zero, median of 3:")
        results = {}
        for name, argv in rows.items():
            secs = statistics.median(timed(argv, stdin=subprocess.DEVNULL) for _ in range(3))
            results[name] = n / secs / 1e6
            print(f"  {name:<16}: {results[name]:8.1f} MB/s")
        print(f"  ratio skypty/ssh (both on a pty): {results['skypty -t (pty)'] / results['ssh -tt (pty)']:.2f}x "
              "(target >= 1.0x)")
    finally:
        host.stop()
        sshd.terminate()
        sshd.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

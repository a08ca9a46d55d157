"""Sequential write and read through `skypty-client fs mount` vs sshfs, on loopback.

    python3 benchmarks/bench_fs.py [--mib 256] [--runs 3]

Starts a throwaway sshd (as bench_vs_ssh.py does) and a throwaway `twistd
skypty` host, then for each file system: mount, write an N MiB file in
1 MiB blocks (timed up to and including close(), which waits for every
queued write), unmount, mount again (so nothing comes from the page cache),
read it back in 1 MiB blocks, unmount.  Median of --runs, MB/s (10^6).

Rows: skypty over its Noise TCP port (PK@127.0.0.1:PORT); sshfs over ssh;
and skypty's FUSE client on OpenSSH's sftp-server through a pipe (no
network, no crypto: the FUSE client's own ceiling).
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
from tests.hosts import Host  # noqa: E402

CLIENT = os.path.join(os.path.dirname(sys.executable), "skypty-client")
BLOCK = 1024 * 1024
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


def mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def wait_unmounted(path):
    deadline = time.monotonic() + 15
    while mounted(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not unmount")
        time.sleep(0.02)


def write_file(path, mib):
    block = os.urandom(BLOCK)
    start = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)
    return time.perf_counter() - start


def read_file(path):
    start = time.perf_counter()
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            chunk = f.read(BLOCK)
            if not chunk:
                break
            total += len(chunk)
    return time.perf_counter() - start, total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", metavar="TEXT", help="only the rows whose name contains TEXT")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="skypty-bench-fs-")
    data, mnt = os.path.join(tmp, "data"), os.path.join(tmp, "mnt")
    os.makedirs(data)
    os.makedirs(mnt)
    sshd, ssh = start_sshd(tmp)
    port, key = ssh[2], ssh[4]
    host = Host(tmp, "skypty").start()

    def sky(*extra):
        return ([CLIENT, "fs", "mount", host.target, mnt, "-i", host.config_path, "--remote-root", data]
                + list(extra)), ["fusermount3", "-u", mnt]

    systems = {
        "skypty fs mount (Noise TCP)": sky(),
        "sshfs (ssh)": (["sshfs", "-p", port, "-o", f"IdentityFile={key}", "-o", "StrictHostKeyChecking=no",
                         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                         f"root@127.0.0.1:{data}", mnt], ["fusermount3", "-u", mnt]),
        "skypty FUSE on sftp-server (pipe)": (
            [CLIENT, "fs", "mount", "--sftp-command", SFTP_SERVER, "--remote-root", data, "local", mnt],
            ["fusermount3", "-u", mnt]),
    }
    results = {}
    try:
        for name, (mount, umount) in systems.items():
            if args.only and args.only not in name:
                continue
            writes, reads = [], []
            for run in range(args.runs):
                target = os.path.join(mnt, f"bench-{run}.bin")
                subprocess.run(mount, check=True)
                writes.append(write_file(target, args.mib))
                subprocess.run(umount, check=True)
                wait_unmounted(mnt)
                subprocess.run(mount, check=True)
                secs, total = read_file(target)
                assert total == args.mib * BLOCK, (name, total)
                reads.append(secs)
                subprocess.run(umount, check=True)
                wait_unmounted(mnt)
                os.unlink(os.path.join(data, f"bench-{run}.bin"))
            n = args.mib * BLOCK
            results[name] = (n / statistics.median(writes) / 1e6, n / statistics.median(reads) / 1e6)
        print(f"sequential {args.mib} MiB file, 1 MiB blocks, median of {args.runs} (MB/s):")
        print(f"  {'':<36}{'write':>8}{'read':>8}")
        for name, (w, r) in results.items():
            print(f"  {name:<36}{w:8.1f}{r:8.1f}")
        if "skypty fs mount (Noise TCP)" in results and "sshfs (ssh)" in results:
            sw, sr = results["skypty fs mount (Noise TCP)"]
            ow, orr = results["sshfs (ssh)"]
            print(f"  ratio skypty/sshfs: write {sw / ow:.2f}x, read {sr / orr:.2f}x")
    finally:
        if mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", mnt])
        host.stop()
        sshd.terminate()
        sshd.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

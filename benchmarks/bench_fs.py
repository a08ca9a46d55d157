"""`skypty-client fs mount` vs sshfs on loopback: sequential data, and metadata.

    python3 benchmarks/bench_fs.py [--mib 256] [--runs 3]
    python3 benchmarks/bench_fs.py --metadata [--runs 5]

Starts a throwaway sshd (as bench_vs_ssh.py does) and a throwaway `twistd
skypty` host, then for each file system: mount, write an N MiB file in
1 MiB blocks (timed up to and including close(), which waits for every
queued write), unmount, mount again (so nothing comes from the page cache),
read it back in 1 MiB blocks, unmount.  Median of --runs, MB/s (10^6).

--metadata: a deterministic tree of 1,900 entries (190 directories, 1,710
files, 36 MB) is untarred into each mount (`tar -xf`, as root: owners,
modes and times restored), then `ls -lR` and `du -s` of it; then the mount is
remounted and `ls -lR` (cold) and `du -s` run again.  Runs alternate
between the file systems; medians, seconds.

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


def cpu_seconds(pid):
    """user + system CPU of *pid* so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mount_pid(mnt):
    """The `fs mount` process serving *mnt* (None for sshfs)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"fs" in argv and b"mount" in argv and os.fsencode(mnt) in argv:
                return int(entry)
    return None


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


TREE_DIRS, TREE_FILES, TREE_BYTES = 190, 1710, 36 * 10**6


def make_tree_tar(path):
    """The benchmark tree as a tar file (same bytes every time)."""
    import io
    import random
    import tarfile

    rng = random.Random(16)
    dirs = ["tree"]
    for i in range(1, TREE_DIRS):
        dirs.append(f"{rng.choice(dirs[:max(1, i // 2)])}/d{i:03d}")
    weights = [rng.choice((1, 1, 1, 2, 4, 8, 40)) * rng.random() for _ in range(TREE_FILES)]
    scale = TREE_BYTES / sum(weights)
    blob = rng.randbytes(max(int(w * scale) for w in weights) + 100)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        for i, w in enumerate(weights):
            size = int(w * scale)
            info = tarfile.TarInfo(f"{dirs[i % len(dirs)]}/f{i:04d}.dat")
            info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000 + i
            tar.addfile(info, io.BytesIO(blob[i % 97:i % 97 + size]))


def timed_run(argv):
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def metadata(args, systems, mnt, data, tmp):
    tar_path = os.path.join(tmp, "tree.tar")
    make_tree_tar(tar_path)
    steps = ("untar", "ls -lR", "du -s", "ls -lR (cold)", "du -s (after)")
    times = {name: {step: [] for step in steps} for name in systems}
    for run in range(args.runs):
        for name, (mount, umount) in systems.items():  # alternating: each run visits every system
            dest = os.path.join(mnt, f"run{run}")
            subprocess.run(mount, check=True)
            os.mkdir(dest)
            t = times[name]
            t["untar"].append(timed_run(["tar", "-xf", tar_path, "-C", dest]))
            t["ls -lR"].append(timed_run(["ls", "-lR", dest]))
            t["du -s"].append(timed_run(["du", "-s", dest]))
            subprocess.run(umount, check=True)
            wait_unmounted(mnt)
            subprocess.run(mount, check=True)
            t["ls -lR (cold)"].append(timed_run(["ls", "-lR", dest]))
            t["du -s (after)"].append(timed_run(["du", "-s", dest]))
            subprocess.run(umount, check=True)
            wait_unmounted(mnt)
            shutil.rmtree(os.path.join(data, f"run{run}"))
    print(f"{TREE_DIRS + TREE_FILES}-entry tree ({TREE_BYTES // 10**6} MB), median of {args.runs} "
          "alternating runs (s):")
    print(f"  {'':<36}" + "".join(f"{step:>15}" for step in steps))
    for name, t in times.items():
        print(f"  {name:<36}" + "".join(f"{statistics.median(t[step]):15.3f}" for step in steps))
    if "skypty fs mount (Noise TCP)" in times and "sshfs (ssh)" in times:
        sky, ssh = times["skypty fs mount (Noise TCP)"], times["sshfs (ssh)"]
        ratios = ", ".join(f"{step} {statistics.median(sky[step]) / statistics.median(ssh[step]):.2f}x"
                           for step in steps)
        print(f"  time ratio skypty/sshfs (target <= 1.0x): {ratios}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--metadata", action="store_true", help="untar, ls -lR and du -s instead of MB/s")
    ap.add_argument("--only", metavar="TEXT", help="only the rows whose name contains TEXT")
    ap.add_argument("--mount-option", action="append", default=[], metavar="OPT",
                    help="an extra `fs mount` option for skypty's rows (repeatable)")
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
                + args.mount_option + list(extra)), ["fusermount3", "-u", mnt]

    systems = {
        "skypty fs mount (Noise TCP)": sky(),
        "sshfs (ssh)": (["sshfs", "-p", port, "-o", f"IdentityFile={key}", "-o", "StrictHostKeyChecking=no",
                         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                         f"root@127.0.0.1:{data}", mnt], ["fusermount3", "-u", mnt]),
        "skypty FUSE on sftp-server (pipe)": (
            [CLIENT, "fs", "mount", "--sftp-command", SFTP_SERVER, "--remote-root", data, *args.mount_option,
             "local", mnt], ["fusermount3", "-u", mnt]),
    }
    systems = {name: argv for name, argv in systems.items() if not args.only or args.only in name}
    results = {}
    try:
        if args.metadata:
            return metadata(args, systems, mnt, data, tmp)
        writes = {name: [] for name in systems}
        reads = {name: [] for name in systems}
        cpu = {name: {"host w": [], "client w": [], "host r": [], "client r": []} for name in systems}

        def cpus(name):
            client = mount_pid(mnt)
            return (cpu_seconds(host.proc.pid) if "Noise" in name else 0.0,
                    cpu_seconds(client) if client else 0.0, client)
        for run in range(args.runs):
            for name, (mount, umount) in systems.items():  # alternating: each run visits every system
                target = os.path.join(mnt, f"bench-{run}.bin")
                subprocess.run(mount, check=True)
                h0, c0, client = cpus(name)
                writes[name].append(write_file(target, args.mib))
                h1, c1, _ = cpus(name)
                cpu[name]["host w"].append(h1 - h0)
                cpu[name]["client w"].append(c1 - c0)
                subprocess.run(umount, check=True)
                wait_unmounted(mnt)
                subprocess.run(mount, check=True)
                h0, c0, client = cpus(name)
                secs, total = read_file(target)
                h1, c1, _ = cpus(name)
                cpu[name]["host r"].append(h1 - h0)
                cpu[name]["client r"].append(c1 - c0)
                assert total == args.mib * BLOCK, (name, total)
                reads[name].append(secs)
                subprocess.run(umount, check=True)
                wait_unmounted(mnt)
                os.unlink(os.path.join(data, f"bench-{run}.bin"))
        n = args.mib * BLOCK
        for name in systems:
            results[name] = (n / statistics.median(writes[name]) / 1e6, n / statistics.median(reads[name]) / 1e6)
        print(f"sequential {args.mib} MiB file, 1 MiB blocks, median of {args.runs} alternating runs (MB/s):")
        print(f"  {'':<36}{'write':>8}{'read':>8}   CPU ms/MB: host w, client w, host r, client r")
        for name, (w, r) in results.items():
            per_mb = [statistics.median(cpu[name][k]) * 1000 / (n / 1e6)
                      for k in ("host w", "client w", "host r", "client r")]
            shown = "  ".join(f"{v:4.1f}" if v else "   -" for v in per_mb)
            print(f"  {name:<36}{w:8.1f}{r:8.1f}   {shown}")
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

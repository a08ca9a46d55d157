"""A link emulator without kernel netem: two network namespaces joined by a
user-space relay (delay, seeded random loss, optional bandwidth cap, link
down/up, a new client address as on a roaming laptop).

Layout::

    client netns "lkemu-PID-N-c"          host netns "lkemu-PID-N-h"
      lo, lk0 (TUN) 10.23.1.2/32            lo, lk0 (TUN) 10.23.0.1/32
      default route dev lk0                 default route dev lk0
                  \\                         /
                   relay process (root netns): reads a packet from one
                   TUN, holds it DELAY ms, writes it into the other

The relay is a child process (``python3 linkemu.py _relay``) with a line
protocol on stdin/stdout, so the test process never changes namespace and
its GIL never delays a packet.  Every process started through a ``Link``
runs in one of its namespaces; on exit all of them are killed (by pid, from
``ip netns pids``), the relay stops and both namespaces are deleted.
Namespaces left behind by a process that died without cleaning up (kill -9)
are reaped the next time a Link starts.

    with Link(delay_ms=100, loss=0.0, seed=1) as link:
        link.run_client(["sh", "-c", "..."])     # subprocess.run in the client netns
        link.popen_host([...])                   # subprocess.Popen in the host netns
        link.down(); link.up()
        link.change_client_address()             # -> the new client address

CLI (runs CMD in the client netns; HOST_CMD, if given, in the host netns;
both see LINKEMU_HOST_IP / LINKEMU_CLIENT_IP; SIGUSR1 toggles the link
down/up, SIGUSR2 moves the client to a new address)::

    python3 tests/linkemu.py --delay 100 --loss 0.02 [--host-cmd 'CMD'] -- CMD...

Addresses are 10.23.x.y inside namespaces this module creates: they never
leave the machine.  Needs root (netns, /dev/net/tun) and iproute2.
"""

import argparse
import collections
import ctypes
import errno
import fcntl
import json
import os
import random
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

PREFIX = "lkemu-"
NETNS_DIR = "/run/netns"
DEVICE = "lk0"
HOST_IP = "10.23.0.1"
FIRST_CLIENT_IP = "10.23.1.2"
MTU = 1500

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000


class LinkError(RuntimeError):
    pass


def available():
    """'' if links can be emulated here, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, /dev/net/tun)"
    if not shutil.which("ip"):
        return "needs iproute2 (`ip`)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    probe = f"{PREFIX}probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


def _ip(*args, check=True):
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise LinkError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def _netns_pids(name):
    r = _ip("netns", "pids", name, check=False)
    return [int(p) for p in r.stdout.split() if p.isdigit()]


def _kill_all_in(*names, grace=2.0):
    """SIGTERM every process in the netns *names*, then SIGKILL what is left."""

    def pids_now():
        return [pid for name in names for pid in _netns_pids(name)]

    pids = pids_now()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            pids = pids_now()
            if pids:
                time.sleep(0.02)  # polling with a deadline for processes to exit
        if not pids:
            return


def _delete_netns(name):
    _kill_all_in(name)
    _ip("netns", "del", name, check=False)


def _pid_alive(pid):
    """True if *pid* exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def reap_stale():
    """Delete namespaces of ours whose creating process is gone (a kill -9
    skipped its cleanup). -> the names deleted."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    gone = []
    for name in names:
        if not name.startswith(PREFIX):
            continue
        parts = name[len(PREFIX):].split("-")
        if not parts[0].isdigit() or _pid_alive(int(parts[0])):
            continue
        _delete_netns(name)
        gone.append(name)
    return gone


def leftovers():
    """Names of our namespaces that exist now (for leak tests)."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(PREFIX))
    except FileNotFoundError:
        return []


class Link:
    """Two namespaces joined by an emulated link; a context manager."""

    _count = 0

    def __init__(self, delay_ms=0.0, loss=0.0, seed=0, rate_kbit=0, buffer_bytes=256 * 1024,
                 mtu=MTU):
        Link._count += 1
        base = f"{PREFIX}{os.getpid()}-{Link._count}"
        self.client_ns, self.host_ns = base + "-c", base + "-h"
        self.delay_ms, self.loss, self.seed = delay_ms, loss, seed
        self.rate_kbit, self.buffer_bytes, self.mtu = rate_kbit, buffer_bytes, mtu
        self.host_ip = HOST_IP
        self.client_ip = FIRST_CLIENT_IP
        self._address_generation = 1
        self._relay = None
        self._procs = []
        self._created = []

    # -- lifecycle

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def start(self):
        reap_stale()
        for ns in (self.client_ns, self.host_ns):
            _ip("netns", "add", ns)
            self._created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        self._relay = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "_relay", self.client_ns, self.host_ns,
             "--delay", str(self.delay_ms), "--loss", str(self.loss), "--seed", str(self.seed),
             "--rate-kbit", str(self.rate_kbit), "--buffer", str(self.buffer_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        ready = self._relay.stdout.readline().strip()
        if ready != "ready":
            raise LinkError(f"the relay did not start: {ready or 'exited'}")
        for ns, ip in ((self.client_ns, self.client_ip), (self.host_ns, self.host_ip)):
            _ip("-n", ns, "link", "set", DEVICE, "mtu", str(self.mtu), "txqueuelen", "10000", "up")
            _ip("-n", ns, "addr", "add", f"{ip}/32", "dev", DEVICE)
            _ip("-n", ns, "route", "add", "default", "dev", DEVICE)
        return self

    def close(self):
        """Kill everything in both namespaces, stop the relay, delete the
        namespaces.  Safe to call twice and after a failed start."""
        _kill_all_in(*self._created)
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self._procs = []
        if self._relay is not None:
            try:
                self._relay.stdin.close()
            except OSError:
                pass
            try:
                self._relay.wait(5)
            except subprocess.TimeoutExpired:
                self._relay.kill()
                self._relay.wait()
            self._relay.stdout.close()
            self._relay = None
        for ns in self._created:
            _ip("netns", "del", ns, check=False)
        self._created = []

    # -- the link

    def _control(self, line):
        if self._relay is None:
            raise LinkError("the link is not running")
        self._relay.stdin.write(line + "\n")
        self._relay.stdin.flush()
        reply = self._relay.stdout.readline().strip()
        if not reply.startswith("ok"):
            raise LinkError(f"relay: {line!r}: {reply or 'exited'}")
        return reply[2:].strip()

    def down(self):
        """Drop every packet (and what is in flight) until up()."""
        self._control("down")

    def up(self):
        self._control("up")

    def set(self, delay_ms=None, loss=None, rate_kbit=None):
        """Change the link's delay (each way), loss or rate from now on."""
        parts = [f"{k}={v}" for k, v in (("delay_ms", delay_ms), ("loss", loss), ("rate_kbit", rate_kbit))
                 if v is not None]
        self._control("set " + " ".join(parts))

    def stats(self):
        """{"c2h": {...}, "h2c": {...}}: packets received, sent, dropped (loss/down/queue)."""
        return json.loads(self._control("stats"))

    def change_client_address(self):
        """Move the client to a new address, as a laptop changing networks:
        add the new one, delete the old.  Connections bound to the old address
        stall (the client can no longer send from it; replies to it are
        dropped).  -> the new address."""
        self._address_generation += 1
        new = f"10.23.{self._address_generation}.2"
        _ip("-n", self.client_ns, "addr", "add", f"{new}/32", "dev", DEVICE)
        _ip("-n", self.client_ns, "addr", "del", f"{self.client_ip}/32", "dev", DEVICE)
        # The default route has no preferred source, so it survives; make sure.
        _ip("-n", self.client_ns, "route", "replace", "default", "dev", DEVICE)
        self.client_ip = new
        return new

    # -- processes in the namespaces

    def env(self, extra=None):
        e = dict(os.environ)
        e["LINKEMU_HOST_IP"], e["LINKEMU_CLIENT_IP"] = self.host_ip, self.client_ip
        e.update(extra or {})
        return e

    def client_argv(self, argv):
        return ["ip", "netns", "exec", self.client_ns, *argv]

    def host_argv(self, argv):
        return ["ip", "netns", "exec", self.host_ns, *argv]

    def run_client(self, argv, **kw):
        kw.setdefault("env", self.env())
        return subprocess.run(self.client_argv(argv), **kw)

    def run_host(self, argv, **kw):
        kw.setdefault("env", self.env())
        return subprocess.run(self.host_argv(argv), **kw)

    def popen_client(self, argv, **kw):
        kw.setdefault("env", self.env())
        proc = subprocess.Popen(self.client_argv(argv), **kw)
        self._procs.append(proc)
        return proc

    def popen_host(self, argv, **kw):
        kw.setdefault("env", self.env())
        proc = subprocess.Popen(self.host_argv(argv), **kw)
        self._procs.append(proc)
        return proc

    def spawn_client(self, argv, **kw):
        """A pexpect child on a pty in the client netns."""
        import pexpect

        kw.setdefault("env", self.env())
        kw.setdefault("encoding", "utf-8")
        kw.setdefault("codec_errors", "replace")
        full = self.client_argv(argv)
        return pexpect.spawn(full[0], full[1:], **kw)

    def ping(self, count=5, interval=0.05, timeout=5.0):
        """ICMP echo RTTs (seconds) from the client to the host; None for a lost one."""
        r = self.run_client([sys.executable, os.path.abspath(__file__), "_ping", self.host_ip,
                             str(count), str(interval), str(timeout)],
                            capture_output=True, text=True, timeout=count * (interval + timeout) + 10)
        if r.returncode != 0:
            raise LinkError(f"ping: {r.stderr.strip()}")
        return [None if v == "lost" else float(v) for v in r.stdout.split()]


# -- the relay process


def _setns(path):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns {path}: {os.strerror(e)}")
    finally:
        os.close(fd)


def _open_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def _quiet_ipv6():
    """No IPv6 in the namespace: no router solicitations or MLD reports
    crossing the link and skewing its counts."""
    for key in ("all", "default"):
        try:
            with open(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6", "w") as f:
                f.write("1")
        except OSError:
            pass


class Direction:
    """One direction of the link: a FIFO of (due time, packet)."""

    def __init__(self, src, dst, rng):
        self.src, self.dst, self.rng = src, dst, rng
        self.queue = collections.deque()
        self.delay = 0.0
        self.loss = 0.0
        self.rate = 0.0          # bytes per second; 0 = unlimited
        self.buffer = 256 * 1024
        self.line_free = 0.0     # when the bottleneck is free again (rate cap)
        self.counts = dict(received=0, sent=0, lost=0, down=0, queue=0)

    def offer(self, packet, now, is_down):
        c = self.counts
        c["received"] += 1
        if is_down:
            c["down"] += 1
            return
        if self.loss and self.rng.random() < self.loss:
            c["lost"] += 1
            return
        if self.rate:
            start = max(now, self.line_free)
            if (start - now) * self.rate > self.buffer:  # bottleneck buffer full: tail drop
                c["queue"] += 1
                return
            self.line_free = start + len(packet) / self.rate
            due = self.line_free + self.delay
        else:
            due = now + self.delay
        self.queue.append((due, packet))

    def flush(self, now):
        q = self.queue
        while q and q[0][0] <= now:
            _, packet = q.popleft()
            try:
                os.write(self.dst, packet)
                self.counts["sent"] += 1
            except OSError as e:  # a device going away or full: the packet is lost
                if e.errno not in (errno.EAGAIN, errno.EIO, errno.EINVAL, errno.ENOBUFS):
                    raise
                self.counts["queue"] += 1

    def drop_all(self):
        self.counts["down"] += len(self.queue)
        self.queue.clear()


def relay_main(args):
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    fds = []
    for ns in (args.client_ns, args.host_ns):
        _setns(os.path.join(NETNS_DIR, ns))
        _quiet_ipv6()
        fds.append(_open_tun(DEVICE))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.setns(home, CLONE_NEWNET)  # stay out of `ip netns pids` of either namespace
    os.close(home)
    tun_c, tun_h = fds
    # one generator per direction: a direction's losses depend only on its own packets
    dirs = {"c2h": Direction(tun_c, tun_h, random.Random(f"{args.seed}-c2h")),
            "h2c": Direction(tun_h, tun_c, random.Random(f"{args.seed}-h2c"))}

    def configure(delay_ms=None, loss=None, rate_kbit=None, buffer=None):
        for d in dirs.values():
            if delay_ms is not None:
                d.delay = float(delay_ms) / 1000.0
            if loss is not None:
                d.loss = float(loss)
            if rate_kbit is not None:
                d.rate = float(rate_kbit) * 1000.0 / 8.0
            if buffer is not None:
                d.buffer = int(buffer)

    configure(args.delay, args.loss, args.rate_kbit, args.buffer)
    is_down = False
    sel = selectors.DefaultSelector()
    sel.register(tun_c, selectors.EVENT_READ, dirs["c2h"])
    sel.register(tun_h, selectors.EVENT_READ, dirs["h2c"])
    control = sys.stdin.buffer.raw
    os.set_blocking(control.fileno(), False)
    sel.register(control.fileno(), selectors.EVENT_READ, None)
    pending = b""
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    monotonic = time.monotonic
    while True:
        now = monotonic()
        timeout = None
        for d in dirs.values():
            if d.queue:
                wait = d.queue[0][0] - now
                timeout = wait if timeout is None else min(timeout, wait)
        events = sel.select(None if timeout is None else max(0.0, timeout))
        for key, _ in events:
            d = key.data
            if d is None:
                try:
                    chunk = os.read(key.fd, 4096)
                except BlockingIOError:
                    continue
                if not chunk:  # our parent is gone: stop (the namespaces go with it)
                    return 0
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    words = line.decode().split()
                    if not words:
                        continue
                    if words[0] == "down":
                        is_down = True
                        for dd in dirs.values():
                            dd.drop_all()
                        out.write("ok\n")
                    elif words[0] == "up":
                        is_down = False
                        out.write("ok\n")
                    elif words[0] == "set":
                        configure(**dict(w.split("=", 1) for w in words[1:]))
                        out.write("ok\n")
                    elif words[0] == "stats":
                        out.write("ok " + json.dumps({k: d.counts for k, d in dirs.items()}) + "\n")
                    else:
                        out.write(f"error: unknown command {words[0]!r}\n")
                    out.flush()
                continue
            now = monotonic()
            for _ in range(512):  # bounded, so the other side and due packets get their turn
                try:
                    packet = os.read(key.fd, 65536)
                except BlockingIOError:
                    break
                d.offer(packet, now, is_down)
        now = monotonic()
        for d in dirs.values():
            d.flush(now)


# -- ping (runs inside the client namespace)


def _checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ping_main(args):
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    results = []
    for seq in range(args.count):
        payload = struct.pack("!d", time.monotonic()) + b"linkemu" * 8
        header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload
        sent = time.monotonic()
        sock.sendto(packet, (args.host, 0))
        deadline = sent + args.timeout
        rtt = None
        while rtt is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                break
            ihl = (data[0] & 0x0F) * 4
            icmp_type, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if icmp_type == 0 and rid == ident and rseq == seq:
                rtt = time.monotonic() - sent
        results.append("lost" if rtt is None else f"{rtt:.6f}")
        if seq + 1 < args.count:
            time.sleep(args.interval)  # the ping interval itself, not a race
    print(" ".join(results))
    return 0


# -- CLI


def cli_main(argv):
    ap = argparse.ArgumentParser(
        prog="linkemu.py", description="Run CMD in a client network namespace joined to a host "
        "namespace by an emulated link. SIGUSR1 toggles the link down/up, SIGUSR2 gives the "
        "client a new address.")
    ap.add_argument("--delay", type=float, default=0.0, help="ms each way")
    ap.add_argument("--loss", type=float, default=0.0, help="probability a packet is lost, each way")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate-kbit", type=float, default=0.0, help="bandwidth cap each way (0: none)")
    ap.add_argument("--host-cmd", help="a shell command run in the host namespace while CMD runs")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD... (default: $SHELL)")
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    cmd = cmd or [os.environ.get("SHELL", "/bin/sh")]
    why = available()
    if why:
        print(f"linkemu: {why}", file=sys.stderr)
        return 2

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    with Link(delay_ms=args.delay, loss=args.loss, seed=args.seed, rate_kbit=args.rate_kbit) as link:
        state = {"down": False}

        def toggle(signum, frame):
            state["down"] = not state["down"]
            (link.down if state["down"] else link.up)()
            print(f"linkemu: link {'down' if state['down'] else 'up'}", file=sys.stderr)

        def roam(signum, frame):
            print(f"linkemu: client address now {link.change_client_address()}", file=sys.stderr)

        signal.signal(signal.SIGUSR1, toggle)
        signal.signal(signal.SIGUSR2, roam)
        print(f"linkemu: pid {os.getpid()}; client {link.client_ns} {link.client_ip}, host "
              f"{link.host_ns} {link.host_ip}; {args.delay:g} ms each way, loss {args.loss:g}",
              file=sys.stderr)
        if args.host_cmd:
            link.popen_host(["sh", "-c", args.host_cmd])
        proc = link.popen_client(cmd)
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # the child on the same terminal got it too
                continue


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_relay"]:
        ap = argparse.ArgumentParser()
        ap.add_argument("client_ns")
        ap.add_argument("host_ns")
        ap.add_argument("--delay", type=float, default=0.0)
        ap.add_argument("--loss", type=float, default=0.0)
        ap.add_argument("--seed", type=int, default=0)
        ap.add_argument("--rate-kbit", type=float, default=0.0)
        ap.add_argument("--buffer", type=int, default=256 * 1024)
        args = ap.parse_args(argv[1:])
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
        try:
            return relay_main(args)
        except OSError as e:
            print(f"error: {e}", flush=True)
            return 1
    if argv[:1] == ["_ping"]:
        ap = argparse.ArgumentParser()
        ap.add_argument("host")
        ap.add_argument("count", type=int)
        ap.add_argument("interval", type=float)
        ap.add_argument("timeout", type=float)
        return ping_main(ap.parse_args(argv[1:]))
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())

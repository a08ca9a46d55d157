"""Hosts and terminals on an emulated link (tests/linkemu.py): a skypty host
and an sshd in the host namespace, interactive clients (skypty-client
shell, ssh -tt, mosh) in the client namespace driven through pexpect.

Used by tests/test_links.py and benchmarks/bench_links.py."""

import bisect
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

from tests.hosts import CLIENT, Host, env

PROMPT = "LKP$ "
SKYPTY_PORT, WEB_PORT, DISCOVERY_PORT, SERVER_PORT = 2022, 8080, 9090, 8081
SSH_PORT = 22
HAVE_MOSH = bool(shutil.which("mosh") and shutil.which("mosh-server"))


def shell_env(extra=None):
    """The environment hosts start shells with: plain sh, a prompt nothing else prints."""
    e = env()
    e.update(SHELL="/bin/sh", SKYPTY_REMOTE_SHELL="/bin/sh", PS1=PROMPT, LANG="C.UTF-8", TERM="xterm")
    e.update(extra or {})
    return e


def text_file(path, size):
    """A text file of *size* bytes that never contains PROMPT."""
    line = b"%07d the quick brown fox jumps over the lazy dog; pack my box with five dozen jugs\n"
    with open(path, "wb") as f:
        n = 0
        i = 0
        while n < size:
            chunk = line % i
            f.write(chunk)
            n += len(chunk)
            i += 1
    return path


class LinkHost(Host):
    """A `twistd skypty` host inside the link's host namespace, listening on
    its link address (Noise TCP, web, embedded dmsg discovery and server)."""

    def __init__(self, link, tmpdir, name="host", persistent=False, extra=None, env_extra=None, port_offset=0,
                 side="host", discovery=None, whitelist=()):
        """*port_offset* lets a second host share a namespace.  side="client"
        puts the host in the client namespace (a local host that dials over
        dmsg), listening on that namespace's loopback.  *discovery* (a URL):
        join that dmsg discovery instead of running an embedded one."""
        super().__init__(tmpdir, name, persistent=persistent, extra=extra)
        self.link, self.side = link, side
        self.env_extra = env_extra or {}
        ip = link.host_ip if side == "host" else "127.0.0.1"
        self.tcp_port, self.web_port = SKYPTY_PORT + port_offset, WEB_PORT + port_offset
        self.discovery_port, self.server_port = DISCOVERY_PORT + port_offset, SERVER_PORT + port_offset
        self.data["pty"]["ssh_listen"] = f"{ip}:{self.tcp_port}"
        self.data["pty"]["web_listen"] = f"{ip}:{self.web_port}"
        self.data["pty"]["whitelist"] = list(whitelist)
        if discovery:
            self.data["dmsg"]["discovery"] = discovery
            del self.data["dmsg"]["embedded"]
        else:
            self.data["dmsg"]["discovery"] = f"http://{ip}:{self.discovery_port}"
            self.data["dmsg"]["embedded"] = {"discovery_listen": f"{ip}:{self.discovery_port}",
                                             "server_listen": f"{ip}:{self.server_port}"}
        self.write_config()

    @property
    def discovery_url(self):
        return self.data["dmsg"]["discovery"]

    def start(self, attempts=1):
        return self._start()

    def _start(self):
        popen = self.link.popen_host if self.side == "host" else self.link.popen_client
        self.proc = popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "--logfile", self.log_path, "skypty", "--config", self.config_path],
            cwd=self.dir, env=shell_env(self.env_extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not self._ready():
            if time.monotonic() > deadline:
                raise AssertionError(f"the {self.side}-side host did not come up: {self.log()}")
            time.sleep(0.05)  # polling with a deadline
        return self

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"host exited: {self.proc.stderr.read().decode()} {self.log()}")
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(self.cli)  # the TCP listeners start in the same reactor turn
            return True
        except OSError:
            return False
        finally:
            s.close()

    @property
    def target(self):
        return f"{self.pk}@{self.link.host_ip}:{self.tcp_port}"

    def shell_argv(self, *extra):
        return CLIENT + ["shell", self.target, "-i", self.config_path, *extra]

    def start_argv(self, remote_pk, *extra):
        """An interactive shell on *remote_pk* over dmsg, dialled by this (local) host."""
        return CLIENT + ["start", remote_pk, "--cliaddr", self.cli, "-i", self.config_path, *extra]

    def joined(self, pk=None):
        """Is *pk* (default: this host) in the dmsg discovery with a server?  Asked
        from the client namespace, where the discovery is reachable."""
        code = ("import json, sys, urllib.request\n"
                "try:\n"
                "    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:\n"
                "        sys.exit(0 if json.load(r).get('client', {}).get('delegated_servers') else 1)\n"
                "except (OSError, ValueError):\n"
                "    sys.exit(1)\n")
        url = f"{self.discovery_url}/dmsg-discovery/entry/{pk or self.pk}"
        return self.link.run_client([sys.executable, "-c", code, url], capture_output=True).returncode == 0

    def wait_joined(self, pk=None, timeout=30):
        deadline = time.monotonic() + timeout
        while not self.joined(pk):
            if time.monotonic() > deadline:
                raise AssertionError(f"{pk or self.pk} did not join dmsg: {self.log()[-2000:]}")
            time.sleep(0.2)  # polling with a deadline


class LinkSshd:
    """A throwaway sshd in the host namespace (its own keys and config)."""

    def __init__(self, link, tmpdir):
        self.link = link
        self.dir = os.path.join(str(tmpdir), "sshd")
        os.makedirs(self.dir, exist_ok=True)
        d = self.dir
        for key in ("host_key", "user_key"):
            if not os.path.exists(f"{d}/{key}"):
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/{key}"], check=True)
        shutil.copy(f"{d}/user_key.pub", f"{d}/authorized_keys")
        with open(f"{d}/sshd_config", "w") as f:
            f.write(f"Port {SSH_PORT}\nListenAddress {link.host_ip}\nHostKey {d}/host_key\n"
                    f"AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n"
                    "UsePAM no\nStrictModes no\nPidFile none\nPermitRootLogin yes\n"
                    "AcceptEnv LANG LC_*\nPrintMotd no\nPrintLastLog no\n")
        self.ssh_opts = ["-i", f"{d}/user_key", "-o", "StrictHostKeyChecking=no", "-o",
                         "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
        self.proc = None

    def start(self):
        os.makedirs("/run/sshd", exist_ok=True)
        self.proc = self.link.popen_host(["/usr/sbin/sshd", "-D", "-e", "-f", f"{self.dir}/sshd_config"],
                                         stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while self.link.run_client(["ssh", *self.ssh_opts, f"root@{self.link.host_ip}", "true"],
                                   capture_output=True, timeout=20).returncode != 0:
            if time.monotonic() > deadline:
                raise AssertionError("sshd did not come up")
            time.sleep(0.1)  # polling with a deadline
        return self

    def ssh_argv(self):
        return ["ssh", "-tt", *self.ssh_opts, f"root@{self.link.host_ip}",
                f"cd /; SHELL=/bin/sh PS1='{PROMPT}' exec sh -i"]

    def mosh_argv(self):
        ssh = " ".join(["ssh", *self.ssh_opts])
        return ["mosh", f"--ssh={ssh}", "--predict=never", f"root@{self.link.host_ip}", "--",
                "env", f"PS1={PROMPT}", "SHELL=/bin/sh", "sh", "-i"]


class Term:
    """An interactive client on a pty in the client namespace.  A reader
    thread keeps everything it printed with arrival times, so waits can say
    when a pattern arrived and never miss output in a flood."""

    def __init__(self, link, argv, name, env_extra=None, dimensions=(24, 80), screen=False):
        self.name = name
        self.screen = None
        if screen:  # a VT100 screen (pyte) for clients that draw diffs, as mosh does
            import pyte

            self.screen = pyte.Screen(dimensions[1], dimensions[0])
            self._stream = pyte.Stream(self.screen)
        self.child = link.spawn_client(argv, env=shell_env(env_extra), dimensions=dimensions, timeout=5,
                                       maxread=65536)
        self._text = []        # chunks
        self._ends = []        # cumulative end offset of each chunk
        self._times = []       # arrival time of each chunk
        self._joined = ""
        self._joined_upto = 0
        self.closed = False
        self._watches = []     # screen predicates not yet true: [predicate, time it became true]
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self.mark = 0

    def _read(self):
        import pexpect

        while True:
            try:
                data = self.child.read_nonblocking(65536, timeout=1)
            except pexpect.TIMEOUT:
                continue
            except (pexpect.EOF, OSError, ValueError):
                with self._cond:
                    self.closed = True
                    self._cond.notify_all()
                return
            now = time.monotonic()
            with self._cond:
                end = (self._ends[-1] if self._ends else 0) + len(data)
                self._text.append(data)
                self._ends.append(end)
                self._times.append(now)
                if self.screen is not None:
                    self._stream.feed(data)
                    for watch in self._watches:
                        if watch[1] is None and watch[0](self.screen):
                            watch[1] = now
                    self._watches = [w for w in self._watches if w[1] is None]
                self._cond.notify_all()

    @property
    def size(self):
        with self._cond:
            return self._ends[-1] if self._ends else 0

    def _all(self):
        with self._cond:
            if len(self._text) > self._joined_upto:
                self._joined += "".join(self._text[self._joined_upto:])
                self._joined_upto = len(self._text)
            return self._joined

    def text(self, start=0):
        return self._all()[start:]

    def _arrival(self, offset):
        with self._cond:
            i = bisect.bisect_right(self._ends, offset)
            return self._times[min(i, len(self._times) - 1)]

    def wait_for(self, pattern, timeout, start=None):
        """Wait until *pattern* (a string) appears at or after *start* (default:
        the mark); move the mark past it.  -> the time it arrived, or None."""
        start = self.mark if start is None else start
        deadline = time.monotonic() + timeout
        while True:
            i = self._all().find(pattern, start)
            if i >= 0:
                end = i + len(pattern)
                self.mark = end
                return self._arrival(end - 1)
            with self._cond:
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return None
                self._cond.wait(min(left, 0.2))

    def watch_screen(self, predicate):
        """Start watching for predicate(screen): the reader thread notes when the
        output that made it hold arrived, however late someone waits for it."""
        with self._cond:
            watch = [predicate, None]
            if predicate(self.screen):
                watch[1] = self._times[-1] if self._times else time.monotonic()
            else:
                self._watches.append(watch)
            return watch

    def read_screen(self, fn):
        """fn(screen), with the reader thread held off."""
        with self._cond:
            return fn(self.screen)

    def wait_watch(self, watch, timeout):
        """-> when the watched predicate became true, or None after *timeout*."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while watch[1] is None:
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return None
                self._cond.wait(min(left, 0.2))
            return watch[1]

    def wait_screen(self, predicate, timeout):
        """Wait until predicate(screen) holds; -> when the output that made it
        hold arrived, or None."""
        return self.wait_watch(self.watch_screen(predicate), timeout)

    def watch_output(self, pattern):
        """A watch for *pattern* on screen (screen terms) or in the output after the mark."""
        if self.screen is None:
            return ("raw", pattern, self.mark)
        return self.watch_screen(lambda screen: any(pattern in line for line in screen.display))

    def wait_output_watch(self, watch, timeout):
        if isinstance(watch, tuple):
            return self.wait_for(watch[1], timeout, start=watch[2])
        return self.wait_watch(watch, timeout)

    def wait_output(self, pattern, timeout):
        """*pattern* in the output after the mark (on screen, for a screen term)."""
        return self.wait_output_watch(self.watch_output(pattern), timeout)

    def at_prompt(self, timeout, after=None):
        """Wait for a fresh prompt with the cursor after it (after the text
        *after* is on screen, for a screen term). -> arrival time or None."""
        if self.screen is None:
            deadline = time.monotonic() + timeout
            if after is not None and self.wait_for(after, timeout) is None:
                return None
            return self.wait_for(PROMPT, max(0.0, deadline - time.monotonic()))

        def ready(screen):
            line = screen.display[screen.cursor.y]
            if line[:screen.cursor.x] != PROMPT or line[screen.cursor.x:].strip():
                return False
            return after is None or any(after in row for row in screen.display)

        return self.wait_screen(ready, timeout)

    def arrival_of(self, pattern, start=0, not_before=None):
        """When the first *pattern* at or after offset *start* (and, with
        *not_before*, in output that arrived at or after that time) arrived; None if absent."""
        with self._cond:
            if not_before is not None:
                i = bisect.bisect_left(self._times, not_before)
                if i >= len(self._times):
                    return None
                start = max(start, self._ends[i] - len(self._text[i]))
        i = self._all().find(pattern, start)
        return None if i < 0 else self._arrival(i + len(pattern) - 1)

    def skip_to_end(self):
        self.mark = self.size

    def send(self, data):
        self.child.send(data)

    def close(self):
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close(force=True)
        self._thread.join(5)

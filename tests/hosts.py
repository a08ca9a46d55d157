"""Real `twistd skypty` processes for end-to-end tests."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

from skypty.config import generate_config_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT = [sys.executable, "-m", "skypty.client.main"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling with a deadline, not papering over a race


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
    return e


class Host:
    """One host process with its own config, sockets and ports."""

    def __init__(self, tmpdir, name="host", persistent=False, embedded=True, discovery_port=None,
                 server_port=None, extra=None):
        self.dir = os.path.join(str(tmpdir), name)
        os.makedirs(self.dir, exist_ok=True)
        self.config_path = os.path.join(self.dir, "skywire-config.json")
        self.tcp_port, self.web_port = free_port(), free_port()
        self.discovery_port = discovery_port or free_port()
        self.server_port = server_port or free_port()
        data = generate_config_data(cli_address=os.path.join(self.dir, "pty.sock"),
                                    ssh_listen=f"127.0.0.1:{self.tcp_port}",
                                    web_listen=f"127.0.0.1:{self.web_port}",
                                    discovery_port=self.discovery_port, server_port=self.server_port)
        if not embedded:
            del data["dmsg"]["embedded"]
        data["pty"]["persistent_sessions"] = persistent
        for key, value in (extra or {}).items():
            data["pty"][key] = value
        self.data = data
        self.write_config()
        self.pk = data["pk"]
        self.cli = data["pty"]["cli_address"]
        self.proc = None
        self.log_path = os.path.join(self.dir, "twistd.log")

    def write_config(self):
        with open(self.config_path, "w") as f:
            json.dump(self.data, f)

    def start(self, attempts=3):
        """Start the host; if another process took one of our free ports first
        (they are picked before the host binds them), pick new ones and retry."""
        for attempt in range(attempts):
            try:
                return self._start()
            except AssertionError as e:
                if "Address already in use" not in str(e) or attempt == attempts - 1:
                    raise
                self.proc.wait()
                self.tcp_port, self.web_port = free_port(), free_port()
                self.data["pty"]["ssh_listen"] = f"127.0.0.1:{self.tcp_port}"
                self.data["pty"]["web_listen"] = f"127.0.0.1:{self.web_port}"
                if "embedded" in self.data["dmsg"]:
                    self.discovery_port, self.server_port = free_port(), free_port()
                    self.data["dmsg"]["discovery"] = f"http://127.0.0.1:{self.discovery_port}"
                    self.data["dmsg"]["embedded"] = {"discovery_listen": f"127.0.0.1:{self.discovery_port}",
                                                     "server_listen": f"127.0.0.1:{self.server_port}"}
                self.write_config()

    def _start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "--logfile", self.log_path, "skypty", "--config", self.config_path],
            cwd=self.dir, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(self._ready, what=f"{self.cli} to accept connections")
        return self

    def run_expecting_failure(self, timeout=30):
        """Start, expect the process to exit; -> everything it said."""
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "--logfile", self.log_path, "skypty", "--config", self.config_path],
            cwd=self.dir, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out.decode() + self.log()

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"host exited: {self.proc.stderr.read().decode()} {self.log()}")
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(self.cli)
            s2 = socket.create_connection(("127.0.0.1", self.tcp_port))
            s2.close()
            return True
        except OSError:
            return False
        finally:
            s.close()

    def joined_dmsg(self):
        """Is this host registered in its dmsg discovery with a server session?"""
        import urllib.request

        url = f"http://127.0.0.1:{self.discovery_port}/dmsg-discovery/entry/{self.pk}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return bool(json.load(r).get("client", {}).get("delegated_servers"))
        except (OSError, ValueError):
            return False

    def log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def children(self):
        """[(pid, state)] of the processes whose parent is the host process."""
        from tests.procutil import children_of

        return children_of(self.proc.pid)

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def client(self, *args, input=None, timeout=60):
        """Run skypty-client with this host's identity; -> CompletedProcess."""
        argv = CLIENT + list(args)
        return subprocess.run(argv, input=input, capture_output=True, timeout=timeout, env=env(),
                              cwd=self.dir)

    @property
    def target(self):
        return f"{self.pk}@127.0.0.1:{self.tcp_port}"

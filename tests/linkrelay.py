"""A TCP relay on loopback that behaves like a slow, unreliable path
(without namespaces or netem): every byte is held *delay* seconds each way
(optionally behind a *rate* bottleneck), and the path can go silent.

- ``stall()`` / ``resume()``: nothing crosses (new connections are accepted
  but hang, as a dial over a dead path does).  On resume what was held
  arrives as TCP's retransmissions would deliver it: a connection whose
  bytes were held for T seconds waits up to T more (capped at 120 s), as
  the retransmission timer doubles at every loss.
- ``strand()``: the connections open now never carry another byte (the
  client's address changed: its old path is gone); new ones work.

The relay's own sockets acknowledge everything, so only the endpoints'
application timers can notice a silent path: exactly what the client's
pings must do.
"""

import collections
import socket
import threading
import time


class _Direction:
    def __init__(self, relay, src, dst, down):
        self.relay, self.src, self.dst, self.down = relay, src, dst, down
        self.queue = collections.deque()  # (deliver at, data)
        self.cond = threading.Condition()
        self.free_at = 0.0  # when the bottleneck finishes what it holds
        self.closed = False

    def receive(self):
        try:
            while True:
                data = self.src.recv(65536)
                if not data:
                    break
                now = time.monotonic()
                if self.relay.rate:
                    self.free_at = max(self.free_at, now) + len(data) / self.relay.rate
                    at = self.free_at + self.relay.delay
                else:
                    at = now + self.relay.delay
                with self.cond:
                    self.queue.append((at, data))
                    self.cond.notify()
        except OSError:
            pass
        with self.cond:
            self.closed = True
            self.cond.notify()

    def send(self, conn):
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.closed:
                        self.cond.wait()
                    if not self.queue:
                        break
                    at, data = self.queue[0]
                wait = at - time.monotonic()
                if wait > 0:
                    time.sleep(wait)  # the path's latency: this thread is the wire
                    continue
                if not self.relay.passes(conn):
                    self.relay.changed.wait(0.05)  # held: the path is down
                    continue
                with self.cond:
                    self.queue.popleft()
                self.dst.sendall(data)
                if self.down:
                    self.relay.bytes_down += len(data)
        except OSError:
            pass
        for s in (self.src, self.dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class LinkRelay:
    """Listens on 127.0.0.1:port (``address``) and relays to *target* (host, port)."""

    def __init__(self, target, delay=0.1, rate=None):
        self.target, self.delay, self.rate = target, delay, rate
        self.bytes_down = 0
        self.connections = 0
        self.stalled = False
        self._stranded = set()
        self._blocked_since = {}  # conn -> when its bytes were first held
        self._held_until = {}  # conn -> the retransmission (backed off) after an outage
        self._conns = []
        self.changed = threading.Event()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.address = self._listener.getsockname()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self):
        return self.address[1]

    def passes(self, conn):
        if self.stalled or conn in self._stranded:
            self._blocked_since.setdefault(conn, time.monotonic())
            return False
        until = self._held_until.get(conn)
        return until is None or time.monotonic() >= until

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            conn = self.connections = self.connections + 1
            threading.Thread(target=self._relay, args=(conn, client), daemon=True).start()

    def _relay(self, conn, client):
        # The dial to the target goes through the "path" too: wait while it is down.
        while not self.passes(conn):
            self.changed.wait(0.05)
        upstream = socket.create_connection(self.target)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conns.append((conn, client, upstream))
        for src, dst, down in ((client, upstream, False), (upstream, client, True)):
            d = _Direction(self, src, dst, down)
            threading.Thread(target=d.receive, daemon=True).start()
            threading.Thread(target=d.send, args=(conn,), daemon=True).start()

    def _changed(self):
        self.changed.set()
        self.changed.clear()

    def stall(self):
        self.stalled = True
        self._changed()

    def resume(self):
        now = time.monotonic()
        for conn, since in list(self._blocked_since.items()):
            if conn not in self._stranded:
                self._held_until[conn] = now + min(now - since, 120.0)
        self._blocked_since.clear()
        self.stalled = False
        self._changed()

    def strand(self):
        """The connections open now are cut off for good (silently)."""
        self._stranded.update(range(1, self.connections + 1))
        self._changed()

    def shutdown(self):
        try:
            self._listener.close()
        except OSError:
            pass
        for _, client, upstream in self._conns:
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass

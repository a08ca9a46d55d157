"""A TCP relay on loopback that delays every byte by a fixed one-way time in
each direction (RTT = 2 x delay): a slow path without root or netem.

Bytes keep their order and are never merged across the delay (each read
is sent on its own, when due), so the far end sees the same pattern of
writes, late.  Used by tests/test_predict_pty.py and benchmarks/bench_keys.py.
"""

import collections
import socket
import threading
import time


class DelayRelay:
    def __init__(self, target_port, rtt, host="127.0.0.1"):
        self.target = (host, target_port)
        self.delay = rtt / 2
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.sockets = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sockets += [client, server]
            self._pipe(client, server)
            self._pipe(server, client)

    def _pipe(self, src, dst):
        queue = collections.deque()
        ready = threading.Condition()

        def read():
            while True:
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                with ready:
                    queue.append((time.monotonic() + self.delay, data))
                    ready.notify()
                if not data:
                    return

        def write():
            while True:
                with ready:
                    while not queue:
                        ready.wait()
                    due, data = queue.popleft()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)  # the emulated path's latency itself
                try:
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()

    def cut(self):
        """Drop every connection through the relay (new ones are still accepted)."""
        sockets, self.sockets = self.sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def close(self):
        self.closed = True
        self.listener.close()
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass


class DelayUDPRelay:
    """The same for UDP (mosh): datagrams from the client are sent on to
    *target_port* from a socket of our own, the replies back to the client's
    latest address, each one *rtt*/2 late."""

    def __init__(self, target_port, rtt, host="127.0.0.1"):
        self.target = (host, target_port)
        self.delay = rtt / 2
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind((host, 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind((host, 0))
        self.port = self.front.getsockname()[1]
        self.client = None
        self.closed = False
        self.queue = collections.deque()
        self.ready = threading.Condition()
        threading.Thread(target=self._read, args=(self.front, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.back, False), daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self, sock, from_client):
        while not self.closed:
            try:
                data, address = sock.recvfrom(65536)
            except OSError:
                return
            if from_client:
                self.client = address
            with self.ready:
                self.queue.append((time.monotonic() + self.delay, data, from_client))
                self.ready.notify()

    def _write(self):
        while not self.closed:
            with self.ready:
                while not self.queue:
                    self.ready.wait()
                due, data, from_client = self.queue.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # the emulated path's latency itself
            try:
                if from_client:
                    self.back.sendto(data, self.target)
                elif self.client is not None:
                    self.front.sendto(data, self.client)
            except OSError:
                pass

    def close(self):
        self.closed = True
        self.front.close()
        self.back.close()

"""A relay (unix socket, or TCP when given (host, port) addresses) that
tests can cut, and hold closed, at will."""

import os
import socket
import threading


class Relay:
    def __init__(self, path, target):
        self.path, self.target = path, target
        self.bytes_down = 0  # host -> client
        self.connections = 0
        self._conns = []
        self._lock = threading.Lock()
        self._listener = None
        self.open()

    @staticmethod
    def _socket(address):
        return socket.socket(socket.AF_INET if isinstance(address, tuple) else socket.AF_UNIX)

    def open(self):
        if isinstance(self.path, str) and os.path.exists(self.path):
            os.unlink(self.path)
        self._listener = self._socket(self.path)
        if isinstance(self.path, tuple):
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(self.path)
        self._listener.listen(8)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def close_listener(self):
        """Refuse new connections until open() (the socket file goes away)."""
        listener, self._listener = self._listener, None
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        listener.close()
        if isinstance(self.path, str):
            os.unlink(self.path)

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = self._socket(self.target)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()
                upstream.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src, dst, down):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                if down:
                    with self._lock:
                        self.bytes_down += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        """Drop every live connection, as a network failure would."""
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def shutdown(self):
        if self._listener is not None:
            self.close_listener()
        self.cut()

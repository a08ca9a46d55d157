"""Blocking client transports over the sans-I/O cores (no Twisted: a
one-shot ``exec`` must start fast).

``PlainChannel`` is a unix/TCP socket (the control socket); ``NoiseChannel``
runs Noise XK as initiator over TCP, pinning the host's key.  Both offer
``send(bytes)``, ``recv() -> bytes`` (b'' at EOF) and ``fileno()``.
"""

import socket
import struct

from skypty.errors import SkyptyError

CONNECT_TIMEOUT = 10.0


class TransportError(SkyptyError):
    pass


class PlainChannel:
    def __init__(self, sock):
        self.sock = sock

    def send(self, data):
        self.sock.sendall(data)

    def recv(self):
        return self.sock.recv(262144)

    def fileno(self):
        return self.sock.fileno()

    def settimeout(self, t):
        self.sock.settimeout(t)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class NoiseChannel(PlainChannel):
    def __init__(self, sock, encoder, decoder, remote_pk):
        super().__init__(sock)
        self.encoder, self.decoder = encoder, decoder
        self.remote_pk = remote_pk
        self._ready = []

    def send(self, data):
        self.sock.sendall(self.encoder.encrypt(data))

    def recv(self):
        while not self._ready:
            data = self.sock.recv(262144)
            if not data:
                return b""
            self._ready = self.decoder.receive(data)
        out = b"".join(self._ready)
        self._ready = []
        return out

    def pending(self):
        return bool(self._ready)


class HandshakeClosed(TransportError):
    pass


def _recv_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise HandshakeClosed("connection closed during the handshake")
        out += chunk
    return out


def connect_unix(path, timeout=CONNECT_TIMEOUT):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except FileNotFoundError:
        sock.close()
        raise TransportError(f"no host is listening on {path} (is `twistd skypty` running?)") from None
    except OSError as e:
        sock.close()
        raise TransportError(f"cannot connect to {path}: {e.strerror or e}") from None
    return PlainChannel(sock)


def connect_tcp(host, port, timeout=CONNECT_TIMEOUT):
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise TransportError(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def connect_noise(host, port, remote_pk, local_sk, timeout=CONNECT_TIMEOUT):
    """TCP, then Noise XK as initiator; the host must hold *remote_pk*'s key.

    In XK our first message is sealed to *remote_pk*: a host with another key
    cannot read it and hangs up before answering, which is ssh's "host key
    mismatch" moment.  (A host refusing *our* key does so only after the
    handshake: request_service sees that.)"""
    from skypty.noise import NoiseError, NoiseHandshake, frame_handshake

    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sock = connect_tcp(host, port, timeout)
    answered = False
    try:
        hs = NoiseHandshake("XK", True, local_sk, remote_pk)
        sock.sendall(frame_handshake(hs.write_message()))
        (length,) = struct.unpack(">H", _recv_exact(sock, 2))
        hs.read_message(_recv_exact(sock, length))
        answered = True
        sock.sendall(frame_handshake(hs.write_message()))
        encoder, decoder = hs.split()
    except socket.timeout:
        sock.close()
        raise TransportError(f"the host at {address} did not complete the handshake within "
                             f"{timeout:.0f}s (is it a skypty host?)") from None
    except (NoiseError, HandshakeClosed, ConnectionResetError, BrokenPipeError) as e:
        sock.close()
        if answered:
            raise TransportError(f"noise handshake with {address} failed: {e}") from None
        from skypty.client.errors import wrong_host_key

        raise TransportError(wrong_host_key(address, remote_pk.hex())) from None
    except OSError as e:
        sock.close()
        raise TransportError(f"noise handshake with {address} failed: {e.strerror or e}") from None
    return NoiseChannel(sock, encoder, decoder, remote_pk)


def connect_control(network, address, timeout=CONNECT_TIMEOUT):
    if network == "unix":
        return connect_unix(address, timeout)
    host, _, port = address.rpartition(":")
    return PlainChannel(connect_tcp(host.strip("[]") or "127.0.0.1", int(port), timeout))

"""Blocking client transports over the sans-I/O cores (no Twisted: a
one-shot ``exec`` must start fast).

``PlainChannel`` is a unix/TCP socket (the control socket); ``NoiseChannel``
runs Noise XK as initiator over TCP, pinning the host's key.  Both offer
``send(bytes)``, ``recv() -> bytes`` (b'' at EOF) and ``fileno()``; both
block, up to the channel's timeout (``socket.timeout`` after it).

The socket itself is non-blocking and the channel waits with select() only
when the kernel says "not now": a Python socket with a timeout polls before
every send and recv, which was two extra system calls per keystroke in an
interactive shell, where the loop has already selected.
"""

import _socket  # socket.py's C core: see connect_unix
import os
import select
import sys

from skypty.errors import SkyptyError

CONNECT_TIMEOUT = 10.0
RECV_SIZE = 262144


class TransportError(SkyptyError):
    pass


def wait_for_fd(obj, timeout=None, for_write=False):
    """Wait until *obj* (anything with fileno()) is readable (or writable);
    False on timeout.  poll(), not select(): a process holding many sockets
    (a fleet exec, a benchmark) has fds past select()'s limit of 1024."""
    poller = select.poll()
    poller.register(obj, select.POLLOUT if for_write else select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))


class PlainChannel:
    def __init__(self, sock):
        self.sock = sock
        self.timeout = sock.gettimeout()
        sock.setblocking(False)
        # One buffer for every recv: a fresh 256 KiB object per recv was an
        # mmap, mremap and munmap each time.
        self._buffer = bytearray(RECV_SIZE)
        self._view = memoryview(self._buffer)

    def _wait(self, for_write):
        if not wait_for_fd(self.sock, self.timeout, for_write):
            raise TimeoutError("timed out")  # what a socket with a timeout raises (socket.timeout)

    def send(self, data):
        view = None
        while data:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            if view is None:
                view = data = memoryview(data)
            data = data[sent:]
            self._wait(for_write=True)

    def _recv_view(self):
        """The next bytes as a view of the channel's buffer (valid until the next recv)."""
        while True:
            try:
                n = self.sock.recv_into(self._buffer)
            except BlockingIOError:
                self._wait(for_write=False)
                continue
            return self._view[:n]

    def recv(self):
        return bytes(self._recv_view())

    def fileno(self):
        return self.sock.fileno()

    def settimeout(self, t):
        self.timeout = t

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
        PlainChannel.send(self, self.encoder.encrypt(data))

    def recv(self):
        while not self._ready:
            data = self._recv_view()  # the decoder copies what it keeps
            if not data:
                return b""
            self._ready = self.decoder.receive(data)
        ready, self._ready = self._ready, []
        return ready[0] if len(ready) == 1 else b"".join(ready)

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


class ForeignSocketError(TransportError):
    """The control socket is held by another user: not our host."""


def user_name(uid):
    """'uid 65534 (nobody)', or 'uid 65534' when it has no name."""
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def socket_peer(sock, path):
    """(pid, uid) of the process that listens behind a connected unix socket
    (the kernel's SO_PEERCRED, fixed when it called listen()); pid is None
    where only the file's owner can be read."""
    peercred = getattr(_socket, "SO_PEERCRED", None)
    if peercred is None:  # not Linux: the socket file's owner is the next best witness
        return None, os.stat(path).st_uid
    cred = sock.getsockopt(_socket.SOL_SOCKET, peercred, 12)  # struct ucred {pid, uid, gid}
    return int.from_bytes(cred[0:4], sys.byteorder), int.from_bytes(cred[4:8], sys.byteorder)


def check_socket_owner(sock, path, what="the control socket", setting="pty.cli_address, or --cliaddr here"):
    """The control socket gives whoever answers it our commands (sudo
    passwords typed into a shell included): it must be our own host or
    root's.  In a shared directory such as /tmp another user can bind the
    path first; refuse that before a byte is sent."""
    pid, uid = socket_peer(sock, path)
    me = os.geteuid()
    if uid in (me, 0):
        return
    held = f"{user_name(uid)}, pid {pid}" if pid else user_name(uid)
    trusted = "root" if me == 0 else f"you ({user_name(me)}) or root"
    raise ForeignSocketError(
        f"refusing {what} {path}: it is held by {held}, not by {trusted}; another "
        f"user may be impersonating the host (stop that process, and give the host a socket in "
        f"a directory only you can write: {setting})")


def foreign_control_socket(transport):
    """For a Twisted transport (cp, fs mount): the refusal, if it is a unix
    socket another user listens on; else None (Noise connections are TCP and
    prove the host by its key)."""
    get_handle = getattr(transport, "getHandle", None)
    sock = get_handle() if get_handle is not None else None
    if getattr(sock, "family", None) != _socket.AF_UNIX:
        return None
    try:
        check_socket_owner(sock, sock.getpeername())
    except ForeignSocketError as e:
        return str(e)
    return None


def connect_unix(path, timeout=CONNECT_TIMEOUT):
    # A bare _socket.socket: everything a channel uses is in the C object,
    # and `import socket` (its enums, selectors) was ~4 ms of a one-shot
    # exec through the local host.
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        check_socket_owner(sock, path)
    except FileNotFoundError:
        sock.close()
        raise TransportError(f"no host is listening on {path} (is `twistd skypty` running?)") from None
    except ForeignSocketError:
        sock.close()
        raise
    except OSError as e:
        sock.close()
        raise TransportError(f"cannot connect to {path}: {e.strerror or e}") from None
    return PlainChannel(sock)


def connect_tcp(host, port, timeout=CONNECT_TIMEOUT):
    import socket

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
    import socket
    import struct

    from skypty.wire.noise import NoiseError, NoiseHandshake, frame_handshake

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


def _proc_net_address(family, address):
    """An (ip, port) as /proc/net/tcp[6] spells it: the address's 32-bit
    words in host byte order, in hex, then the port."""
    import socket
    import struct

    packed = socket.inet_pton(family, address[0])
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words) + f":{address[1]:04X}"


def tcp_peer_uid(sock):
    """The uid owning the other end of a TCP connection when that end is on
    this machine (its accepted socket is in /proc/net/tcp[6] with the
    listener's uid); None when it is not found there (another machine)."""
    family = sock.family
    theirs = _proc_net_address(family, sock.getpeername()), _proc_net_address(family, sock.getsockname())
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 7 and (fields[1], fields[2]) == theirs:
                        return int(fields[7])
        except OSError:
            continue
    return None


def connect_control(network, address, timeout=CONNECT_TIMEOUT):
    if network == "unix":
        return connect_unix(address, timeout)
    host, _, port = address.rpartition(":")
    sock = connect_tcp(host.strip("[]") or "127.0.0.1", int(port), timeout)
    # A tcp control socket on loopback can be squatted like a unix one (another
    # user listens on the port first): the same rule, from /proc/net/tcp.
    uid = tcp_peer_uid(sock)
    if uid is not None and uid not in (os.geteuid(), 0):
        sock.close()
        me = os.geteuid()
        trusted = "root" if me == 0 else f"you ({user_name(me)}) or root"
        raise ForeignSocketError(
            f"refusing the control socket tcp {address}: it is held by {user_name(uid)}, not by {trusted}; "
            f"another user may be impersonating the host (stop that process, or give the host another "
            f"pty.cli_address)")
    return PlainChannel(sock)

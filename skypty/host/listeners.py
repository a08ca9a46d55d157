"""Listeners of the host that need more than a plain endpoint service, and
the start-up checks that let a host fail with one clear line.

Every message names the setting, the value and the fix, because it is the
only thing an operator sees when a start fails.
"""

import errno
import os
import socket
import stat
import struct

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from skypty.errors import SkyptyError


class ListenError(SkyptyError):
    """A listener that cannot start; the message is one line for the operator."""


# errno -> what to do about it (after the system's own words, which people search for)
_FIXES = {
    errno.EADDRINUSE: "another program listens there: stop it, or choose another port",
    errno.EACCES: "ports below 1024 need root: choose a port above 1024",
    errno.EADDRNOTAVAIL: "not an address of this machine: use one of its addresses, "
                         "or \":PORT\" for every interface",
}


def describe_failure(setting, value, error):
    """An exception from starting a listener -> one line for the operator."""
    if isinstance(error, ListenError):
        return str(error)
    if isinstance(error, CannotListenError):
        error = error.socketError
    tcp = not str(value).startswith(("/", "unix:"))  # the hints are about TCP ports
    if isinstance(error, OSError) and error.errno == errno.EADDRINUSE and tcp:
        holder = tcp_listener_uid(str(value).rpartition(":")[2])
        who = f", {user_name(holder)}," if holder is not None and holder != os.geteuid() else ""
        reason = f"{error.strerror} (another program{who} listens there: stop it, or choose another port)"
    elif isinstance(error, OSError) and error.errno in _FIXES and tcp:
        reason = f"{error.strerror} ({_FIXES[error.errno]})"
    elif isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
        # Taken between the start-up check and the listen: say by whom.
        holder = unix_socket_holder(str(value).removeprefix("unix:"))
        reason = f"{error.strerror}" + (f" ({holder})" if holder else "")
    elif isinstance(error, OSError):
        reason = f"cannot listen: {error.strerror or error}"
    else:
        reason = f"cannot listen: {error}"
    return f"{setting} {value}: {reason}"


def tcp_listener_uid(port):
    """The uid of a process listening on TCP *port* (any address), from
    /proc/net/tcp[6]; None if none is found."""
    try:
        wanted = f":{int(port):04X}"
    except ValueError:
        return None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 7 and fields[1].endswith(wanted) and fields[3] == "0A":  # LISTEN
                        return int(fields[7])
        except OSError:
            continue
    return None


def check_tcp_free(setting, host, port):
    """Raise ListenError if (host, port) cannot be bound right now.

    Twisted sets SO_REUSEADDR on its listening ports, so the probe does too:
    a port held only by TIME_WAIT connections counts as free, as it will be.
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as e:
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ListenError(describe_failure(setting, shown, e)) from None
    finally:
        probe.close()


def user_name(uid):
    """'uid 65534 (nobody)', or 'uid 65534' when it has no name."""
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def peer_credentials(sock):
    """(pid, uid) of the process listening behind a connected unix socket."""
    cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", cred)
    return pid, uid


# In a directory anyone may write (/tmp), anyone can take the path first.
_SQUATTED_FIX = ("choose a path in a directory only this user can write, e.g. /run/skypty/pty.sock "
                 "or $XDG_RUNTIME_DIR/pty.sock")


def _held_by(setting, path, pid, uid):
    """The refusal for a live socket at *path*, naming who holds it."""
    if uid != os.geteuid():
        return ListenError(f"{setting} {path}: held by another user, {user_name(uid)}, pid {pid}: "
                           f"not this host's to replace (stop that process, or {_SQUATTED_FIX})")
    return ListenError(f"{setting} {path}: another host is already listening there, pid {pid} "
                       f"(stop it, or choose another path)")


def clear_stale_unix_socket(path, setting="socket"):
    """Remove *path* if it is a dead socket; refuse, naming the holder (uid,
    pid), if a live process is behind it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    owner = "" if st.st_uid == os.geteuid() else f", owned by {user_name(st.st_uid)}"
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"{setting} {path}: exists and is not a socket{owner} (not replacing it: "
                          f"move it away, or choose another path)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        pid, uid = peer_credentials(probe)
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            try:
                os.unlink(path)  # nobody listens: a leftover from a crashed host
            except FileNotFoundError:
                pass
            except OSError as e2:  # another user's file in a sticky directory such as /tmp
                raise ListenError(f"{setting} {path}: cannot remove a dead socket{owner}: {e2.strerror} "
                                  f"(remove it as root, or {_SQUATTED_FIX})") from None
            return
        raise ListenError(f"{setting} {path}: cannot check it{owner}: {e.strerror} "
                          f"(choose another path)") from None
    finally:
        probe.close()
    raise _held_by(setting, path, pid, uid)


def unix_socket_holder(path):
    """'held by uid N (name), pid P' for a live socket at *path*, else ''."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        pid, uid = peer_credentials(probe)
    except OSError:
        return ""
    finally:
        probe.close()
    return f"held by {user_name(uid)}, pid {pid}"


def check_socket_directory(setting, path):
    """Create the socket's directory now, so a bad path fails before the start."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise ListenError(f"{setting} {path}: cannot create directory {parent}: {e.strerror} "
                          f"(choose another path)") from None


def is_live_skypty_host(pid):
    """Is *pid* a running ``twistd skypty``?  (PIDs are reused after kill -9.)"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True  # cannot tell: keep the lock rather than break a live host's
    # The subcommand is its own argument; twistd may be a script or `python -c ...run()`.
    return b"skypty" in argv and any(b"twistd" in arg for arg in argv)


def clear_stale_lock(path, setting="socket"):
    """Twisted guards a unix socket with ``PATH.lock``, a symlink to the owner's
    PID.  It only asks whether that PID is alive, so after ``kill -9`` a reused
    PID blocks every restart; a lock whose owner is not a live skypty host is
    removed here.  A live host's lock is refused with one line."""
    lock = path + ".lock"
    try:
        owner = os.readlink(lock)
    except FileNotFoundError:
        return
    except OSError:
        return  # not a symlink: not Twisted's lock, let Twisted decide
    try:
        pid = int(owner)
    except ValueError:
        pid = None
    if pid is not None and pid != os.getpid() and is_live_skypty_host(pid):
        raise ListenError(f"{setting} {path}: locked by a running skypty host, pid {pid} "
                          f"(stop it, or choose another path)")
    try:
        os.unlink(lock)
    except FileNotFoundError:
        pass


class ControlSocketService(service.Service):
    """The local control socket: unix (mode 0600, stale file replaced) or tcp."""

    log = Logger()

    def __init__(self, reactor, network, address, factory, setting="pty.cli_address"):
        self.reactor = reactor
        self.network = network
        self.address = address
        self.factory = factory
        self.setting = setting
        self.port = None

    def check(self):
        """Everything startService could trip over, checked without listening."""
        if self.network == "unix":
            check_socket_directory(self.setting, self.address)
            clear_stale_unix_socket(self.address, self.setting)
        else:
            from skypty.config import ListenAddress

            listen = ListenAddress.parse(self.address, self.setting)
            check_tcp_free(self.setting, listen.host, listen.port)

    def startService(self):
        super().startService()
        if self.network == "unix":
            self.check()
            self.port = self.reactor.listenUNIX(self.address, self.factory, mode=0o600)
            os.chmod(self.address, 0o600)
        else:
            from skypty.config import ListenAddress

            ep = endpoints.serverFromString(
                self.reactor, ListenAddress.parse(self.address, self.setting).endpoint)
            # Whoever can connect acts as this host: keep a tcp control socket on loopback.
            d = ep.listen(self.factory)
            d.addCallback(lambda port: setattr(self, "port", port))
            failures = []
            d.addErrback(failures.append)  # a tcp listen fails synchronously: raise it here
            if failures:
                failures[0].raiseException()
        self.log.debug("control socket listening on {network}:{address}", network=self.network,
                       address=self.address)

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return defer.maybeDeferred(port.stopListening)

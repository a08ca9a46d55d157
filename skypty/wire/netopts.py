"""Socket options shared by every long-lived TCP connection skypty keeps.

A link that silently drops packets (NAT timeout, cable pulled, peer host
gone) never delivers a FIN or RST: without TCP keepalive the connection
looks alive for hours.  Short keepalive timers notice it within about a
minute (IDLE + INTERVAL * COUNT = 20 + 10 * 3 s).
"""

import os
import socket

KEEPALIVE_IDLE = 20       # seconds of silence before the first probe
KEEPALIVE_INTERVAL = 10   # seconds between probes
KEEPALIVE_COUNT = 3       # unanswered probes before the kernel drops the link


def _socket_of(transport_or_socket):
    if isinstance(transport_or_socket, socket.socket):
        return transport_or_socket
    get = getattr(transport_or_socket, "getHandle", None)
    handle = get() if get is not None else getattr(transport_or_socket, "socket", None)
    return handle if isinstance(handle, socket.socket) else None


def keepalive_timers():
    """(idle, interval, count): the defaults, or ``SKYPTY_TCP_KEEPALIVE=idle,interval,count``
    (seconds, seconds, probes) for links that must be declared dead sooner or later."""
    override = os.environ.get("SKYPTY_TCP_KEEPALIVE", "")
    try:
        idle, interval, count = (int(v) for v in override.split(","))
        if min(idle, interval, count) > 0:
            return idle, interval, count
    except ValueError:
        pass
    return KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT


def enable_keepalive(transport_or_socket, idle=None, interval=None, count=None):
    """Turn on TCP keepalive with short timers where the platform has them,
    and bound how long sent data may stay unacknowledged (TCP_USER_TIMEOUT):
    keepalive probes only run while nothing is in flight, so a host writing
    shell output into a dead link needs the second limit.

    Accepts a Twisted TCP transport or a socket; anything else (a test
    double, a Unix socket, TLS over something odd) is left alone.
    -> True if keepalive was enabled."""
    defaults = keepalive_timers()
    idle = idle or defaults[0]
    interval = interval or defaults[1]
    count = count or defaults[2]
    sock = _socket_of(transport_or_socket)
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        return False
    # Each option exists on Linux; macOS has only TCP_KEEPALIVE (= idle).
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPALIVE", idle),
                        ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count),
                        ("TCP_USER_TIMEOUT", (idle + interval * count) * 1000)):
        option = getattr(socket, name, None)
        if option is None:
            continue
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
        except OSError:
            pass  # an option the kernel refuses only makes detection slower
    return True

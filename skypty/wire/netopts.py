"""Socket options shared by every long-lived TCP connection skypty keeps.

A link that silently drops packets (NAT timeout, cable pulled, peer host
gone) never delivers a FIN or RST: without TCP keepalive the connection
looks alive for hours.  Short keepalive timers notice it within about a
minute (IDLE + INTERVAL * COUNT = 20 + 10 * 3 s).

A connection that carries a shell (the Noise TCP port) is given longer
(SHELL_KEEPALIVE: 60 + 20 * 8 = 220 s): ending it ends a plain shell, and
ssh keeps one through an outage of minutes (its TCP retransmits for ~15
minutes).  A Wi-Fi handover or a 3-minute outage must not cost the shell;
a peer that is really gone still frees its shell within 4 minutes.
"""

import os
import socket

KEEPALIVE_IDLE = 20       # seconds of silence before the first probe
KEEPALIVE_INTERVAL = 10   # seconds between probes
KEEPALIVE_COUNT = 3       # unanswered probes before the kernel drops the link
SHELL_KEEPALIVE = (60, 20, 8)  # (idle, interval, count) for connections that carry shells


def _socket_of(transport_or_socket):
    if isinstance(transport_or_socket, socket.socket):
        return transport_or_socket
    get = getattr(transport_or_socket, "getHandle", None)
    handle = get() if get is not None else getattr(transport_or_socket, "socket", None)
    return handle if isinstance(handle, socket.socket) else None


def keepalive_timers(defaults=(KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)):
    """(idle, interval, count): *defaults*, or ``SKYPTY_TCP_KEEPALIVE=idle,interval,count``
    (seconds, seconds, probes) for links that must be declared dead sooner or later."""
    override = os.environ.get("SKYPTY_TCP_KEEPALIVE", "")
    try:
        idle, interval, count = (int(v) for v in override.split(","))
        if min(idle, interval, count) > 0:
            return idle, interval, count
    except ValueError:
        pass
    return defaults


def enable_keepalive(transport_or_socket, idle=None, interval=None, count=None, timers=None):
    """Turn on TCP keepalive with short timers where the platform has them,
    and bound how long sent data may stay unacknowledged (TCP_USER_TIMEOUT):
    keepalive probes only run while nothing is in flight, so a host writing
    shell output into a dead link needs the second limit.

    Accepts a Twisted TCP transport or a socket; anything else (a test
    double, a Unix socket, TLS over something odd) is left alone.
    *timers*: (idle, interval, count) in place of the short defaults (e.g.
    SHELL_KEEPALIVE); ``SKYPTY_TCP_KEEPALIVE`` overrides either.
    -> True if keepalive was enabled."""
    defaults = keepalive_timers(timers) if timers else keepalive_timers()
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


# Linux's option numbers; Python's socket module names neither (yet).
TCP_THIN_LINEAR_TIMEOUTS = getattr(socket, "TCP_THIN_LINEAR_TIMEOUTS", 16)
TCP_RTO_MAX_MS = getattr(socket, "TCP_RTO_MAX_MS", 44)  # Linux >= 6.15
INTERACTIVE_RTO_MAX_MS = 1000
# Linux gives up on unacknowledged data after tcp_retries2 (15) retries, a
# limit it turns into time assuming the backoff goes up to 120 s (~15
# minutes); with the backoff capped at 1 s that would be ~15 s.  So a capped
# socket gets its give-up time explicitly, ssh's ~15 minutes, unless the
# caller already set one (enable_keepalive's).
INTERACTIVE_USER_TIMEOUT_MS = 15 * 60 * 1000


def quick_retransmits(transport_or_socket, rto_max_ms=INTERACTIVE_RTO_MAX_MS):
    """An interactive connection resumes soon after an outage: TCP doubles its
    retransmission timeout at every loss (up to 120 s), so after a minute
    down the next retry may come half a minute after the link is back (ssh
    resumed 36 s late after 3 minutes).  Cap the backoff at *rto_max_ms*
    (TCP_RTO_MAX_MS, Linux 6.15), else keep the first retries linear
    (TCP_THIN_LINEAR_TIMEOUTS, for thin streams such as a shell's).
    A retry a second costs a few tiny packets while a link is down.
    -> the option that took, or None."""
    sock = _socket_of(transport_or_socket)
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
    if user_timeout is None:
        return None  # without it a capped backoff would end the connection in seconds
    try:
        if not sock.getsockopt(socket.IPPROTO_TCP, user_timeout):
            sock.setsockopt(socket.IPPROTO_TCP, user_timeout, INTERACTIVE_USER_TIMEOUT_MS)
    except OSError:
        return None
    for name, option, value in (("TCP_RTO_MAX_MS", TCP_RTO_MAX_MS, rto_max_ms),
                                ("TCP_THIN_LINEAR_TIMEOUTS", TCP_THIN_LINEAR_TIMEOUTS, 1)):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
            return name
        except OSError:
            continue
    return None

"""Helpers to assert on processes and fds from /proc (no sleeps: poll with a deadline)."""

import os
import time

from twisted.internet import defer, reactor, task


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def pid_alive(pid):
    """True if *pid* exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def zombie_children():
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[0] == "Z" and fields[1] == me:
                found.append(int(entry))
    return found


@defer.inlineCallbacks
def wait_until(predicate, timeout=10.0, interval=0.02):
    """Poll *predicate* on the reactor until it is true or *timeout* passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        yield task.deferLater(reactor, interval, lambda: None)

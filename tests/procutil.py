"""Helpers to assert on processes and fds from /proc (no sleeps: poll with a deadline)."""

import os
import time


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def pid_alive(pid):
    """True if *pid* exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children_of(pid):
    """[(pid, state letter)] of the processes whose parent is *pid*."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append((int(entry), fields[0]))
    return found


def zombie_children():
    return [pid for pid, state in children_of(os.getpid()) if state == "Z"]


def wait_until(predicate, timeout=10.0, interval=0.02):
    """Poll *predicate* on the reactor until it is true or *timeout* passes."""
    from twisted.internet import defer, reactor, task

    @defer.inlineCallbacks
    def poll():
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s: {predicate}")
            yield task.deferLater(reactor, interval, lambda: None)

    return poll()

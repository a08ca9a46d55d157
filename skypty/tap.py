"""``twistd skypty --config skywire-config.json``: options and service assembly.

Everything that can stop a start is checked here, before twistd daemonises
(it forks after makeService): the config, the control socket, the manhole
and every TCP port.  A failure is one line on stderr naming the setting, the
value and the fix, and exit code 1, with ``twistd -n`` and daemonised alike.
"""

import os
import sys

from twisted.python import usage

from skypty.config import ConfigError, load_or_create_config


def fail(message):
    """Stop the start with one line (twistd's UsageError would print its whole usage)."""
    raise SystemExit(f"skypty: {message}")


class Options(usage.Options):
    synopsis = "[--config PATH] [--manhole ENDPOINT] [--log-level LEVEL]"
    longdesc = (
        "Run a Skywire-compatible pty host. Whitelisted peers (own PK, hypervisors, "
        "pty.whitelist) can open a shell, run commands, mount the filesystem or use the "
        "web terminal. If the config file does not exist (its directory must), a fresh one "
        "with new keys and an embedded local dmsg network is written there first."
    )
    optParameters = [
        ["config", "c", "skywire-config.json", "Path to the Skywire visor config (JSON)."],
        ["manhole", None, None,
         "Serve a twisted.conch manhole on this endpoint, e.g. unix:/run/skypty-manhole.sock "
         "(overrides the config's pty.manhole)."],
        ["log-level", None, None,
         "debug, info, warn, error or critical (overrides the config's pty.log_level; default info: "
         "one line per meaningful event)."],
    ]

    def postOptions(self):
        from skypty.logs import parse_level

        check_pidfile(getattr(self, "parent", None))
        path = self["config"]
        try:
            self.config, self.created = load_or_create_config(path)
        except ConfigError as e:
            fail(e)
        if self.created:
            sys.stderr.write(
                f"skypty: NOTE: {path} did not exist, so a new config with a NEW identity was "
                f"written there (pk {self.config.pk.hex()}); if you meant an existing config, "
                f"stop this host and fix --config\n")
        try:
            self.log_level = parse_level(self["log-level"] or self.config.pty.log_level)
        except ValueError as e:
            fail(f"--log-level: {e}" + discard_new_config(self))


def discard_new_config(options):
    """A start that fails removes the config (and its new identity) that this
    same start wrote, and nothing else; -> what to add to the failure line."""
    if not getattr(options, "created", False):
        return ""
    path = options["config"]
    try:
        os.unlink(path)
    except OSError as e:
        return f" (the new config {path} it wrote is still there: {e.strerror})"
    options.created = False
    return f" (the new config {path} it wrote was removed)"


def check_pidfile(twistd_options):
    """twistd refuses a live pidfile with a paragraph, after these options are
    parsed; a second host started in the same directory is the usual cause,
    so say it here in one line."""
    path = twistd_options.get("pidfile") if twistd_options is not None else None
    if not path:
        return
    try:
        with open(path) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return  # none, unreadable or stale: twistd deals with it
    fail(f"--pidfile {path}: twistd pid {pid} is running with it (stop it, or give this host "
         f"its own: twistd --pidfile other.pid ... or --pidfile= with -n)")


def makeService(options):
    from skypty.host.listeners import ListenError
    from skypty.host.service import HostService
    from skypty.logs import FilteredLogging, make_log_file_private

    twistd = getattr(options, "parent", None)  # twistd's own options, when run by twistd
    foreground = bool(twistd and (twistd.get("nodaemon") or twistd.get("debug")))
    host = HostService(options.config, manhole=options["manhole"], foreground=foreground,
                       created=options.created)
    try:
        host.check_listeners()
    except ListenError as e:
        fail(f"{e}{discard_new_config(options)}")
    make_log_file_private(twistd)
    if twistd is None:
        return host
    return FilteredLogging(host, twistd, options.log_level)

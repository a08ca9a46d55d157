"""``twistd skypty --config skywire-config.json``: options and service assembly."""

import glob
import os
import stat
import sys

from twisted.python import usage

from skypty.config import ConfigError, generate_config_file, load_config


class Options(usage.Options):
    synopsis = "[--config PATH] [--manhole ENDPOINT]"
    longdesc = (
        "Run a Skywire-compatible pty host. Whitelisted peers (own PK, hypervisors, "
        "pty.whitelist) can open a shell, run commands, mount the filesystem or use the "
        "web terminal. If the config file does not exist, a fresh one with new keys and "
        "an embedded local dmsg network is written there first."
    )
    optParameters = [
        ["config", "c", "skywire-config.json", "Path to the Skywire visor config (JSON)."],
        ["manhole", None, None,
         "Serve a twisted.conch manhole on this endpoint, e.g. unix:/run/skypty-manhole.sock "
         "(overrides the config's pty.manhole)."],
    ]

    def postOptions(self):
        path = self["config"]
        if not os.path.exists(path):
            try:
                config = generate_config_file(path)
            except OSError as e:
                raise usage.UsageError(f"cannot write a new config to {path}: {e.strerror}")
            sys.stderr.write(f"skypty: wrote a new config to {path} (pk {config.pk.hex()})\n")
        try:
            self.config = load_config(path)
        except ConfigError as e:
            raise usage.UsageError(str(e))


def make_log_file_private(twistd_options):
    """Create twistd's log file 0600 (or tighten an existing one) before twistd
    opens it, which it does after makeService.  twistd's LogFile then keeps an
    existing file's mode, also for the fresh file after each rotation, so the
    process umask (which SFTP uploads rely on) stays as it is."""
    if twistd_options is None or twistd_options.get("syslog") or twistd_options.get("logger"):
        return
    path = twistd_options.get("logfile") or ""
    if path == "-" or (not path and twistd_options.get("nodaemon")):
        return  # stdout
    path = os.path.abspath(path or "twistd.log")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):  # not e.g. /dev/null
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        for rotated in glob.glob(glob.escape(path) + ".*"):
            if stat.S_ISREG(os.lstat(rotated).st_mode):
                os.chmod(rotated, 0o600)
    except OSError:
        pass  # twistd reports an unusable log path itself


def makeService(options):
    from skypty.host.service import HostService

    make_log_file_private(getattr(options, "parent", None))
    return HostService(options.config, manhole=options["manhole"])

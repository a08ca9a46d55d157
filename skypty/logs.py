"""The host's log policy: one line per meaningful event at the default level.

twistd writes every event it is given, at every level: Autobahn's handshake
debugging (about 120 lines per web-terminal open), a "Starting factory" and
"Stopping factory" line per HTTP request to discovery, an access-log line per
discovery call.  skypty puts a filtering observer in front of the destination
twistd would have used (stdout under ``twistd -n`` without ``--logfile``, the
log file otherwise, or syslog):

* skypty's own namespaces log at the chosen level (default info: peers
  accepted and refused, sessions started and ended, dmsg sessions up and
  down, whitelist changes);
* everything else (Twisted, Autobahn, treq) only from warn up, unless the
  level is debug;
* factory start/stop chatter only at debug, whoever logs it.

The level comes from ``twistd skypty --log-level`` or the config's
``pty.log_level``.
"""

import glob
import os
import stat

from twisted.application import service
from twisted.logger import (
    FilteringLogObserver, ILogObserver, LogLevel, LogLevelFilterPredicate, PredicateResult,
)

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}

# Factory.doStart/doStop log these for every noisy factory (one per outgoing HTTP request).
_FACTORY_CHATTER = ("Starting factory", "Stopping factory")


def parse_level(name):
    """'info' -> LogLevel.info; ValueError with a one-line message otherwise."""
    try:
        return LEVELS[str(name).lower()]
    except KeyError:
        raise ValueError(f"expected one of debug, info, warn, error, critical, got {name!r}") from None


def predicates(level):
    """The filter predicates for *level* (a LogLevel)."""
    if level == LogLevel.debug:
        return []  # debugging: everything, as twistd would write it
    by_namespace = LogLevelFilterPredicate(defaultLogLevel=max(level, LogLevel.warn))
    by_namespace.setLogLevelForNamespace("skypty", level)

    def no_factory_chatter(event):
        fmt = event.get("log_format") or ""
        if fmt.startswith(_FACTORY_CHATTER) and event.get("log_level", LogLevel.info) < LogLevel.warn:
            return PredicateResult.no
        return PredicateResult.maybe

    return [no_factory_chatter, by_namespace]


def filtered(observer, level):
    """*observer*, seeing only what the policy for *level* lets through."""
    return FilteringLogObserver(observer, predicates(level))


def twistd_destination(server_options):
    """The observer twistd itself would create for these options.

    twistd's own logger factory decides (``--logfile``, ``--syslog``,
    ``-n``), so every twistd option keeps its documented meaning.
    """
    from twisted.scripts.twistd import _SomeApplicationRunner

    return _SomeApplicationRunner.loggerFactory(server_options)._getLogObserver()


class FilteredLogging(service.MultiService):
    """The host service, plus the log policy for the application it joins.

    twistd asks its Application for an ILogObserver component before it
    falls back to its own destination; twistd creates that Application after
    makeService, and this is the service it parents, so the component is set
    here.  An explicit ``twistd --logger`` still wins (twistd checks it first).
    """

    def __init__(self, child, server_options, level):
        super().__init__()
        self.server_options = server_options
        self.level = level
        child.setServiceParent(self)

    def setServiceParent(self, parent):
        from twisted.python.components import Componentized

        if isinstance(parent, Componentized) and not self.server_options.get("logger") \
                and parent.getComponent(ILogObserver) is None:
            parent.setComponent(ILogObserver, filtered(twistd_destination(self.server_options), self.level))
        return super().setServiceParent(parent)


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

"""``skypty-visor-app``: skypty as a Skywire visor app.

A visor's ``launcher.apps`` entry names this program; the visor starts it
with ``PROC_CONFIG`` in the environment and stops it with SIGINT.  It then
runs the usual host (control socket, web terminal, whitelist, sessions),
except that:

* the identity is the visor's public key; the host holds no secret key, so
  everything that needs one goes through the visor's app server: listening
  and dialling on dmsg, and on skynet (the visor's routes);
* it listens on ``pty.dmsg_port`` twice, on skynet and on dmsg, both into
  the same connection handler, portal and whitelist as every entry point;
* peers are dialled skynet first, then dmsg (``MultiDialer``);
* the Noise TCP port and an embedded dmsg network, which need a key of the
  host's own, are off (and the log says so);
* status and errors go to the visor (``SetDetailedStatus("Running")``,
  ``SetError``), so ``skywire-cli visor app ls`` shows how it is doing.
"""

import argparse
import json
import os
import sys

import attr
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from skypty.config import ConfigError, parse_config
from skypty.host.service import HostService
from skypty.keys import SecretKey
from skypty.visor import types as V
from skypty.visor.appnet import AppNetServerEndpoint
from skypty.visor.dialer import visor_dialer
from skypty.visor.procconfig import ENV_NAME, ProcConfigError, parse_proc_config

PROG = "skypty-visor-app"
STOP_TIMEOUT = 5.0      # for the visor to acknowledge CloseListener/CloseConn on the way out
REPORT_TIMEOUT = 3.0    # for a last SetError before exiting


def load_pty_config(path, visor_pk):
    """The pty config for a host whose identity is *visor_pk*: the same file
    format as ``twistd skypty`` reads, but ``sk``/``pk`` are not needed (and
    not used).  -> (Config, [notes for the log])."""
    try:
        with open(path, "rb") as f:
            raw = f.read(16 * 1024 * 1024)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the pty config: {e.strerror}") from None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    notes = []
    stated = data.get("pk")
    if isinstance(stated, str) and stated.lower() != visor_pk.hex():
        notes.append(f"{path}: pk {stated[:16]}… is not used: under a visor the host is the visor "
                     f"({visor_pk.hex()})")
    # parse_config checks every other key; the identity it would derive is replaced below.
    scratch = dict(data, sk=SecretKey.generate().hex())
    scratch.pop("pk", None)
    try:
        config = parse_config(scratch, path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return attr.evolve(config, sk=None, pk=visor_pk), notes


def without_own_key_features(config):
    """Turn off what needs the host's own secret key; -> (config, notes)."""
    notes = []
    if config.pty.ssh_listen is not None:
        notes.append(f"{config.pty_key}.ssh_listen {config.pty.ssh_listen} is off under a visor: the "
                     "Noise TCP port needs the host's own secret key (reach this host over skynet or dmsg)")
        config = attr.evolve(config, pty=attr.evolve(config.pty, ssh_listen=None))
    if config.dmsg.embedded is not None:
        notes.append("dmsg.embedded is off under a visor: the visor's dmsg client is used")
        config = attr.evolve(config, dmsg=attr.evolve(config.dmsg, embedded=None))
    return config, notes


class VisorListener(service.Service):
    """One listener through the visor.  Its failure is reported, not raised:
    ``ready`` fires with None or the one-line reason."""

    log = Logger()

    def __init__(self, reactor, app, net, port, factory):
        self.reactor, self.app = reactor, app
        self.net, self.port = net, port
        self.factory = factory
        self.listening = None
        self.ready = defer.Deferred()

    def startService(self):
        super().startService()
        d = AppNetServerEndpoint(self.reactor, self.app, self.net, self.port).listen(self.factory)
        d.addCallbacks(self._listening, self._failed)

    def _listening(self, port):
        self.listening = port
        if not self.running:  # stopped while the Listen call was out
            port.stopListening()
        self.ready.callback(None)

    def _failed(self, f):
        reason = f"cannot listen on {self.net} port {self.port}: {f.getErrorMessage()}"
        self.log.error("{reason}", reason=reason)
        self.ready.callback(reason)

    def stopService(self):
        super().stopService()
        if self.listening is not None:
            return self.listening.stopListening()


class VisorHostService(HostService):
    """The host, with the visor's identity and the visor's networks."""

    def __init__(self, config, app, reactor=None, notes=()):
        self.app = app  # before HostService.__init__, which calls _add_dmsg
        config, more = without_own_key_features(config)
        self.notes = list(notes) + more
        self.visor_listeners = []
        super().__init__(config, reactor=reactor)

    def _add_dmsg(self):
        port = self.config.pty.dmsg_port
        for net in (V.NET_SKYNET, V.NET_DMSG):
            factory = self.connection_factory(net, lambda transport: transport.getPeerPK(),
                                              reject_with_byte=True)
            listener = VisorListener(self.reactor, self.app, net, port, factory)
            listener.setServiceParent(self)
            self.visor_listeners.append(listener)
        self.dialer = visor_dialer(self.reactor, self.app)

    def listening(self):
        """-> Deferred[[reason, ...]] for the listeners that failed (empty: all up)."""
        d = defer.gatherResults([listener.ready for listener in self.visor_listeners])
        return d.addCallback(lambda reasons: [r for r in reasons if r])

    def announce(self):
        for note in self.notes:
            self.log.warn("{note}", note=note)
        super().announce()

    def describe_entry_points(self):
        pty = self.config.pty
        parts = [f"control {pty.cli_network}:{pty.cli_address}"]
        if self.web_url:
            parts.append(f"web {self.web_url.split('?')[0]}")
        parts.append(f"skynet and dmsg port {pty.dmsg_port} through visor {self.config.pk.hex()}'s app "
                     f"server at {self.app.proc_config.app_server_addr}")
        return ", ".join(parts)


# -- the program ------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run skypty as a Skywire visor app: name this program in the visor config's "
                    "launcher.apps; the visor starts it with PROC_CONFIG set and stops it with SIGINT.")
    parser.add_argument("--config", "-c", default="skywire-config.json",
                        help="the pty config (the same JSON as 'twistd skypty' reads; sk/pk are not "
                             "needed: the host is the visor). Default: skywire-config.json in the "
                             "app's working directory")
    parser.add_argument("--log-level", default=None,
                        help="debug, info, warn or error (default info: one line per meaningful event)")
    return parser


class VisorApp:
    """One run: connect, hello, host up, report; stop on SIGINT or when the visor goes."""

    log = Logger()

    def __init__(self, reactor, proc_config, args):
        self.reactor = reactor
        self.proc_config = proc_config
        self.args = args
        self.exit_code = 0
        self.app = None
        self.host = None
        self.stopping = False

    def stop(self, code):
        if self.stopping:
            return
        self.stopping = True
        self.exit_code = code
        if self.reactor.running:
            self.reactor.stop()

    @defer.inlineCallbacks
    def fail(self, message):
        """One line on stderr and in the log; to the visor (SetError) if we can; exit 1."""
        sys.stderr.write(f"{PROG}: {message}\n")
        sys.stderr.flush()
        self.log.critical("{message}", message=message)
        if self.app is not None and not self.app.closed:
            try:
                yield self.app.set_error(message).addTimeout(REPORT_TIMEOUT, self.reactor)
            except Exception:
                pass
        self.stop(1)

    @defer.inlineCallbacks
    def run(self):
        from skypty.host.listeners import ListenError
        from skypty.host.service import StartupError
        from skypty.visor.appclient import connect_app_server

        pc = self.proc_config
        # SIGINT (the visor stopping us) or SIGTERM: a clean stop, whatever closes on the way out.
        self.reactor.addSystemEventTrigger("before", "shutdown", self._shutting_down)
        try:
            self.app = yield connect_app_server(self.reactor, pc)
        except Exception as e:
            yield self.fail(f"cannot reach the visor's app server at {pc.app_server_addr}: {e}")
            return
        self.app.when_lost().addCallback(self._visor_gone)
        try:
            config, notes = load_pty_config(self.args.config, pc.visor_pk)
        except ConfigError as e:
            yield self.fail(str(e))
            return
        try:
            self.host = VisorHostService(config, self.app, self.reactor, notes)
            self.host.check_listeners()
            self.host.startService()
        except (ListenError, StartupError, OSError) as e:
            yield self.fail(str(e))
            return
        self.reactor.addSystemEventTrigger("before", "shutdown", self._stop_host)
        failed = yield self.host.listening()
        if len(failed) == len(self.host.visor_listeners):
            yield self.fail("; ".join(failed))
            return
        try:
            yield self.app.set_detailed_status(V.STATUS_RUNNING)
            if failed:
                yield self.app.set_error("; ".join(failed))
        except Exception as e:
            self.log.warn("could not report the status to the visor: {err}", err=e)

    def _shutting_down(self):
        self.stopping = True

    def _stop_host(self):
        if self.host is None or not self.host.running:
            return None
        d = defer.maybeDeferred(self.host.stopService)
        return d.addTimeout(STOP_TIMEOUT, self.reactor).addErrback(lambda _: None)

    def _visor_gone(self, _):
        if not self.stopping:
            self.log.error("the visor's app server closed the connection; stopping")
            self.stop(1)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        proc_config = parse_proc_config(os.environ.get(ENV_NAME))
    except ProcConfigError as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return 1
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from skypty.logs import filtered, parse_level

    try:
        level = parse_level(args.log_level or "info")
    except ValueError as e:
        sys.stderr.write(f"{PROG}: --log-level: {e}\n")
        return 2
    # The visor files an app's stdout under debug and its stderr under errors: the log goes to stdout.
    globalLogBeginner.beginLoggingTo([filtered(textFileLogObserver(sys.stdout), level)],
                                     redirectStandardIO=False)
    run = VisorApp(reactor, proc_config, args)
    reactor.callWhenRunning(run.run)
    reactor.run()
    return run.exit_code


if __name__ == "__main__":
    # Through the package, so log namespaces read skypty.visorapp (the log policy keys on "skypty").
    from skypty.visorapp import main as package_main

    sys.exit(package_main())

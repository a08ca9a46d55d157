"""PtyAvatar: what one authenticated connection may do on this host.

The realm builds one avatar per connection (as conch does per SSH login).
Its methods are the pty service, in plain Python terms; skypty.host.gateway
binds them to the net/rpc method names and gob types.  Errors a client may
see are RPCFault with the reference implementation's exact strings.
"""

import attr
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from skypty.host.auth import REVOKED, IPtyAvatar
from skypty.host.command import ExecError, run_exec
from skypty.host.persist import OutputLost
from skypty.wire.rpc import RPCError
from skypty.host.shell import DirectReader, PipeProcess, PtyProcess, ShellEnded, SpawnError

ERR_EOF = "EOF"
ERR_RUNNING = "a pty session is already running"
ERR_NO_SESSION = "no active pty session"
# Said instead of "can't find method" so a client can tell this host (the
# feature switched off) from a reference host (no such feature at all).
ERR_SESSIONS_OFF = "dmsgpty: persistent sessions are off on this host"


class RPCFault(RPCError):
    """An error whose message goes back to the client verbatim."""


@attr.s
class HostContext:
    """What every avatar on this host shares."""

    reactor = attr.ib()
    whitelist = attr.ib()
    sessions = attr.ib(default=None)  # a SessionRegistry when persistent_sessions is on
    default_size = attr.ib(default=(30, 100))


@implementer(IPtyAvatar)
class PtyAvatar:
    log = Logger()

    def __init__(self, context, public_key, entry_point):
        self.context = context
        self.public_key = public_key
        self.entry_point = entry_point
        self._proc = None
        self._reader = None  # DirectReader, or a persistent session's follower
        self._err_reader = None  # stderr of a piped (terminal-less) process
        self._session = None
        self._execs = set()  # one-shot commands in flight (Deferreds)
        self.logged_out = False
        self.revoked = False  # taken off the whitelist: pending calls end with REVOKED

    @property
    def persistent(self):
        """True when this host keeps shells alive across dropped streams."""
        return self.context.sessions is not None

    # -- plain pty --------------------------------------------------------
    def start(self, name, args, env, size):
        if self._reader is not None:
            raise RPCFault(ERR_RUNNING)
        rows, cols = size if size else self.context.default_size
        reader = DirectReader()
        try:
            proc = PtyProcess.spawn(self.context.reactor, name, args, env, rows, cols, sink=reader)
        except SpawnError as e:
            raise RPCFault(str(e)) from None
        reader.process = proc
        self._proc, self._reader = proc, reader
        self.log.info("pty started for {pk} via {entry}: {cmd} pid {pid}", pk=self.public_key.hex(),
                      entry=self.entry_point, cmd=name or "(login shell)", pid=proc.pid)
        proc.when_ended().addCallback(self._shell_ended, name or "(login shell)")

    def start_piped(self, name, args, env):
        """skypty extension: the command without a terminal (stdin/stdout/stderr
        are pipes), for a client whose own stdin is not a tty."""
        if self._reader is not None:
            raise RPCFault(ERR_RUNNING)
        reader, err_reader = DirectReader(), DirectReader()
        try:
            proc = PipeProcess.spawn(self.context.reactor, name, args, env, sink=reader, err_sink=err_reader)
        except SpawnError as e:
            raise RPCFault(str(e)) from None
        reader.process = err_reader.process = proc
        self._proc, self._reader, self._err_reader = proc, reader, err_reader
        self.log.info("piped command started for {pk} via {entry}: {cmd} pid {pid}",
                      pk=self.public_key.hex(), entry=self.entry_point, cmd=name, pid=proc.pid)
        proc.when_ended().addCallback(self._shell_ended, name)

    def read_stderr(self, max_bytes):
        if self._err_reader is None:
            return defer.fail(RPCFault(ERR_NO_SESSION))

        def eof(failure):
            if self.revoked:
                raise RPCFault(REVOKED)
            failure.trap(ShellEnded)
            raise RPCFault(ERR_EOF)

        return self._err_reader.read(max_bytes).addErrback(eof)

    def close_stdin(self):
        proc = self._current_process()
        if not isinstance(proc, PipeProcess):
            raise RPCFault("pty.CloseStdin: the command runs on a pty (send ^D instead)")
        proc.close_stdin()

    def exit_status(self):
        """skypty extension: the exit status of this connection's shell or
        command (waiting for it to end): its code, or 128+signal."""
        proc = self._current_process()
        return proc.when_ended().addCallback(lambda status: 128 - status if status < 0 else status)

    def _shell_ended(self, status, name):
        self.log.info("pty ended for {pk} via {entry}: {cmd} exit {status}", pk=self.public_key.hex(),
                      entry=self.entry_point, cmd=name, status=status)

    def read(self, max_bytes):
        if self._reader is None:
            return defer.fail(RPCFault(ERR_NO_SESSION))

        def eof(failure):
            if self.revoked:
                raise RPCFault(REVOKED)
            if failure.check(OutputLost):
                raise RPCFault(str(failure.value))
            failure.trap(ShellEnded)
            raise RPCFault(ERR_EOF)

        return self._reader.read(max_bytes).addErrback(eof)

    def write(self, data):
        proc = self._current_process()
        try:
            return proc.write(data)
        except ShellEnded:
            raise RPCFault(ERR_EOF) from None

    def set_size(self, rows, cols, xpixel=0, ypixel=0):
        self._current_process().resize(rows, cols, xpixel, ypixel)

    def stop(self):
        proc = self._current_process()
        if self._session is not None and self.context.sessions is not None:
            self.context.sessions.stop(self._session.id)
        else:
            proc.stop()  # a pending Read then ends with EOF as the shell's output does

    def ping(self):
        return None

    def _current_process(self):
        if self._proc is None:
            raise RPCFault(ERR_NO_SESSION)
        return self._proc

    # -- one-shot ------------------------------------------------------------
    def exec_(self, name, args, env, stdin, timeout_ms):
        d = run_exec(self.context.reactor, name, args, env, stdin, timeout_ms)
        self._execs.add(d)

        def done(result):
            self._execs.discard(d)
            # One line per exec, when it is over: what ran and how it ended.
            if hasattr(result, "exit_code"):
                how = "timed out" if result.timed_out else f"exit {result.exit_code}"
                self.log.info("exec for {pk} via {entry}: {cmd}: {how} in {ms} ms", pk=self.public_key.hex(),
                              entry=self.entry_point, cmd=name, how=how, ms=result.duration_ms)
            else:
                self.log.info("exec for {pk} via {entry}: {cmd}: {why}", pk=self.public_key.hex(),
                              entry=self.entry_point, cmd=name, why=result.getErrorMessage() or "cancelled")
            return result

        d.addBoth(done)

        def failed(failure):
            if self.revoked:
                raise RPCFault(REVOKED)
            failure.trap(ExecError)
            raise RPCFault(str(failure.value))

        return d.addErrback(failed)

    # -- persistent sessions -------------------------------------------------------
    def start_session(self, name, args, env, size):
        registry = self.context.sessions
        if registry is None:
            # Hosts without persistent sessions behave like the reference before them.
            raise RPCFault("rpc: can't find method pty.StartSession")
        if self._reader is not None:
            raise RPCFault(ERR_RUNNING)
        rows, cols = size if size else self.context.default_size
        try:
            session = registry.start(self.public_key, name, args, env, rows, cols)
        except SpawnError as e:
            raise RPCFault(str(e)) from None
        self._bind(session, registry.attach(session.id, self.public_key))
        return session.id

    def attach(self, session_id, offset=None):
        """Follow a session: from the ring's start (reference clients), or from
        *offset*, the byte count the caller already has; -> (offset, lost)."""
        registry = self.context.sessions
        if registry is None:
            raise RPCFault(ERR_SESSIONS_OFF)
        if self._reader is not None:
            raise RPCFault(ERR_RUNNING)
        try:
            follower = registry.attach(session_id, self.public_key, offset,
                                       report_loss_as_error=offset is not None)
        except LookupError as e:
            raise RPCFault(str(e)) from None
        self._bind(registry.get(session_id), follower)
        lost = max(0, follower.session.ring.start - follower.offset)
        follower.offset += lost  # reported here, so the first read does not report it again
        return follower.offset, lost

    def output_end(self):
        """How many bytes the attached session has written in all (0 if none)."""
        return self._session.ring.end if self._session is not None else 0

    def _bind(self, session, follower):
        self._session, self._reader, self._proc = session, follower, session.process
        self.log.info("session {sid} attached by {pk} via {entry}", sid=session.id,
                      pk=self.public_key.hex(), entry=self.entry_point)

    # -- end of the connection ------------------------------------------------------
    def revoke(self):
        """This key was taken off the whitelist: kill what it runs here (a
        persistent shell too, so there is nothing to reattach to) and any
        one-shot command still in flight.  Pending calls end with REVOKED."""
        self.revoked = True
        if self._session is not None and self.context.sessions is not None:
            self.context.sessions.forget(self._session.id, "owner taken off the whitelist")
        self.logout()  # cancels execs; detaches from the (now dead) session

    def _cancel_execs(self):
        for d in list(self._execs):
            d.cancel()  # kills the command's process group

    def logout(self):
        """The stream dropped: kill a plain shell, detach from a persistent one."""
        if self.logged_out:
            return
        self._cancel_execs()  # nobody is left to read the result
        self.logged_out = True
        if self._session is not None:
            self._reader.detach()
            self.log.info("session {sid} detached by {pk}", sid=self._session.id, pk=self.public_key.hex())
        elif self._proc is not None:
            self._proc.stop()
            self._reader.fail_pending(RPCFault(ERR_EOF))
            if self._err_reader is not None:
                self._err_reader.fail_pending(RPCFault(ERR_EOF))

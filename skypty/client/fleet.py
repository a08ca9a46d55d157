"""``exec`` on many hosts at once (and ``exec --json``).

Each host runs in a worker thread on the client's blocking transports (no
Twisted, as for one host): connect, ask for the pty service, ``pty.Exec``.
At most ``--parallel`` hosts are in flight.  Every host has a deadline
(connect timeout + command timeout + a grace period); the scheduler in the
main thread reports a host that misses it and shuts its socket, so one dead
or silent host never holds up the others or the summary.

Results are printed by the main thread only, in the order hosts finish:
prefixed lines (or one block per host with ``--group``), or one JSON object
per host with ``--json`` (docs/exec-result.schema.json).  The formatting
functions are pure, for the tests.
"""

import base64
import collections
import io
import json
import queue
import sys
import threading
import time
from dataclasses import dataclass

from skypty.errors import SkyptyError

EXIT_TIMEOUT = 124
# After the command's own timeout, how long its result may take to arrive.
RESULT_GRACE = 30.0


@dataclass
class HostResult:
    target: object  # skypty.client.hosts.Target
    exit_code: int = None  # what `exec` would exit with for this host; None: it never ran
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    timed_out: bool = False
    duration_ms: int = 0
    error: str = None  # why the host could not be reached or run the command

    @property
    def ok(self):
        return self.error is None and self.exit_code == 0


# -- pure formatting ---------------------------------------------------------------------------

def encode_stream(data):
    """bytes -> (text, encoding): UTF-8 text as it is, anything else base64."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def transport_name(target):
    if target.direct:
        return "tcp"
    return target.scheme or "local-host"


def result_json(result):
    """One host's result as the documented object (docs/exec-result.schema.json)."""
    stdout, stdout_encoding = encode_stream(result.stdout)
    stderr, stderr_encoding = encode_stream(result.stderr)
    t = result.target
    return {
        "key": t.pk,
        "name": t.name,
        "address": t.address if t.direct else None,
        "transport": transport_name(t),
        "exit_code": result.exit_code,
        "stdout": stdout,
        "stdout_encoding": stdout_encoding,
        "stderr": stderr,
        "stderr_encoding": stderr_encoding,
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "timed_out": result.timed_out,
        "duration_ms": result.duration_ms,
        "error": result.error,
    }


def prefixed(label, data):
    """Each line of *data* as ``label: line`` (a last line without newline gets one)."""
    if not data:
        return b""
    prefix = label.encode() + b": "
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join(prefix + line + b"\n" for line in lines)


def notices(result):
    out = []
    if result.stdout_truncated:
        out.append(b"[skypty: stdout truncated at 16 MiB]\n")
    if result.stderr_truncated:
        out.append(b"[skypty: stderr truncated at 16 MiB]\n")
    if result.error is not None:
        from skypty.client.textsafe import safe  # a host's words, from its error

        out.append(f"skypty-client: {safe(result.error)}\n".encode())
    return b"".join(out)


def seconds(ms):
    return f"{ms / 1000:.2f}s"


def summary(results):
    """The table printed after a fleet run (host order as given)."""
    from skypty.client.textsafe import safe

    rows = [("HOST", "EXIT", "TIME", "TIMED OUT", "ERROR")]
    for r in results:
        rows.append((r.target.label, "-" if r.exit_code is None else str(r.exit_code),
                     seconds(r.duration_ms), "yes" if r.timed_out else "no", safe(r.error or "")))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    ok = sum(r.ok for r in results)
    unreachable = sum(r.error is not None for r in results)
    failed = len(results) - ok - unreachable
    lines.append(f"{len(results)} hosts: {ok} exited 0, {failed} failed or timed out, "
                 f"{unreachable} unreachable or refused")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def fleet_exit_status(results):
    return 0 if results and all(r.ok for r in results) else 1


# -- one host (in a worker thread) ------------------------------------------------------------

class Slot:
    """What the scheduler needs to stop a worker: its socket."""

    def __init__(self):
        self.channel = None
        self.abandoned = False

    def abort(self):
        self.abandoned = True
        channel = self.channel
        if channel is not None:
            import socket

            try:
                channel.sock.shutdown(socket.SHUT_RDWR)  # wakes a recv() blocked in another thread
            except OSError:
                pass
            channel.close()


@dataclass
class Plan:
    """Everything a worker needs, resolved once in the main thread."""

    command: list
    timeout_ms: int
    connect_timeout: float  # direct hosts: connected and accepting within this
    proxy_timeout: float = 60.0  # hosts through the local host: its answer within this
    stdin: bytes = b""
    env: list = ()
    sk: object = None  # our key, for direct targets
    control: tuple = None  # (network, address) of the local host, for the others
    dmsg_port: int = 22


def _connect(target, plan, slot):
    """-> (channel, early bytes) once the host accepted the pty service."""
    from skypty.client.errors import not_whitelisted, proxy_refusal
    from skypty.client.rpc import RejectedError, request_service
    from skypty.client.transport import connect_control, connect_noise
    from skypty.keys import PublicKey
    from skypty.wire import requestline

    if target.direct:
        pk = PublicKey.from_hex(target.pk)
        slot.channel = channel = connect_noise(target.host, target.port, pk, plan.sk, plan.connect_timeout)
        uri = requestline.PTY
    else:
        slot.channel = channel = connect_control(*plan.control, timeout=plan.connect_timeout)
        uri = requestline.proxy_uri(target.pk, plan.dmsg_port)
        if target.scheme:
            uri += f"&scheme={target.scheme}"
    channel.settimeout(plan.connect_timeout if target.direct else plan.proxy_timeout)
    try:
        return channel, request_service(channel, uri)
    except RejectedError as e:
        channel.close()
        if target.direct:
            if e.closed:
                raise SkyptyError(not_whitelisted(target.pk, plan.sk.public_key.hex())) from None
            raise SkyptyError(f"host {target.pk} refused {uri} (that service is off there)") from None
        raise SkyptyError(proxy_refusal(e.reason, e.text, target.pk, plan.dmsg_port, closed=e.closed)) from None


def _exec(channel, early, plan, result):
    from skypty.client.rpc import BlockingRPC
    from skypty.wire import types as T
    from skypty.wire.rpc import RPCError

    rpc = BlockingRPC(channel, early)
    channel.settimeout(plan.timeout_ms / 1000.0 + RESULT_GRACE)
    req = T.CommandExecReq.cls(name=plan.command[0], arg=list(plan.command[1:]), env=list(plan.env),
                               stdin=plan.stdin, timeout_ms=plan.timeout_ms)
    try:
        r = rpc.call("pty.Exec", req, T.CommandExecReq, T.CommandExecResult)
    except RPCError as e:
        if "can't find method pty.Exec" not in str(e) and "can't find service pty.Exec" not in str(e):
            raise
        return _exec_on_pty(rpc, channel, plan, result)
    result.stdout, result.stderr = r.stdout, r.stderr
    result.stdout_truncated, result.stderr_truncated = bool(r.stdout_truncated), bool(r.stderr_truncated)
    result.timed_out = bool(r.timed_out)
    if result.timed_out:
        result.exit_code = EXIT_TIMEOUT
    else:
        result.exit_code = r.exit_code & 0xFF if r.exit_code >= 0 else 1


def _exec_on_pty(rpc, channel, plan, result):
    """A host without pty.Exec (skypty.client.classic): stderr comes merged."""
    from skypty.client.classic import run_exec_on_pty

    out, err = io.BytesIO(), io.BytesIO()
    code = run_exec_on_pty(rpc, channel, plan.command, plan.timeout_ms, plan.stdin, out, err, list(plan.env))
    notice = f"[timed out after {min(plan.timeout_ms, 300_000)}ms]\n".encode()
    stderr = err.getvalue()
    if code == EXIT_TIMEOUT and stderr.endswith(notice):
        result.timed_out, stderr = True, stderr[:-len(notice)]
    truncation = b"[skypty: output truncated at 16 MiB]\n"
    if truncation in stderr:
        result.stdout_truncated, stderr = True, stderr.replace(truncation, b"")
    result.stdout, result.stderr, result.exit_code = out.getvalue(), stderr, code


def describe_error(e, plan, connected, target):
    from skypty.client.errors import explain_rpc
    from skypty.wire.rpc import RPCError

    if isinstance(e, RPCError):
        return explain_rpc(str(e)) or str(e)
    if isinstance(e, TimeoutError) or str(e).endswith("timed out"):
        if connected:
            return "timed out waiting for the command's result"
        limit = plan.connect_timeout if target.direct else plan.proxy_timeout
        return f"no answer within {limit:g}s (--connect-timeout)"
    return str(e) or e.__class__.__name__


def run_one(target, plan, slot, clock=time.monotonic):
    """Connect, exec, -> HostResult; never raises."""
    result = HostResult(target)
    start = clock()
    channel = None
    try:
        channel, early = _connect(target, plan, slot)
        _exec(channel, early, plan, result)
    except Exception as e:  # one host's failure is that host's result, whatever it is
        result.exit_code = None
        result.error = describe_error(e, plan, channel is not None, target)
    finally:
        if channel is not None:
            channel.close()
    result.duration_ms = int((clock() - start) * 1000)
    return result


# -- the scheduler ----------------------------------------------------------------------------------

def run_all(targets, work, parallel, deadline, on_result, clock=time.monotonic):
    """Run ``work(target, slot) -> HostResult`` for every target, at most
    *parallel* at once, each for at most *deadline* seconds; call
    ``on_result(index, result)`` in this thread as each finishes.
    A worker past its deadline is aborted and reported as such; whatever
    it returns later is ignored."""
    pending = collections.deque(enumerate(targets))
    done = queue.Queue()
    running = {}  # index -> (start time, slot)

    def worker(index, target, slot):
        try:
            result = work(target, slot)
        except BaseException as e:  # work should not raise; if it does, that host failed
            result = HostResult(target, error=f"{e.__class__.__name__}: {e}")
        done.put((index, result))

    while pending or running:
        while pending and len(running) < parallel:
            index, target = pending.popleft()
            slot = Slot()
            running[index] = (clock(), slot)
            threading.Thread(target=worker, args=(index, target, slot), daemon=True,
                             name=f"exec-{index}").start()
        wait = min(start + deadline for start, _ in running.values()) - clock()
        try:
            index, result = done.get(timeout=max(0.0, wait))
        except queue.Empty:
            now = clock()
            for index, (start, slot) in list(running.items()):
                if now - start >= deadline:
                    del running[index]
                    slot.abort()
                    on_result(index, HostResult(targets[index], duration_ms=int((now - start) * 1000),
                                                error=f"no result within {deadline:g}s; gave up on it"))
            continue
        if index in running:
            del running[index]
            on_result(index, result)


# -- the verb --------------------------------------------------------------------------------------

class Printer:
    """Writes each finished host as the user asked (main thread only)."""

    def __init__(self, mode, out, err):
        self.mode, self.out, self.err = mode, out, err

    def __call__(self, result):
        if self.mode == "json":
            self.out.write(json.dumps(result_json(result)).encode() + b"\n")
            self.out.flush()
            return
        label = result.target.label
        if self.mode == "group":
            status = "unreachable" if result.error is not None else (
                "timed out" if result.timed_out else f"exit {result.exit_code}")
            self.out.write(f"== {label} ({status}, {seconds(result.duration_ms)}) ==\n".encode())
            self.out.write(result.stdout)
            if result.stdout and not result.stdout.endswith(b"\n"):
                self.out.write(b"\n")
            self.out.flush()
            self.err.write(result.stderr)
            if result.stderr and not result.stderr.endswith(b"\n"):
                self.err.write(b"\n")
            self.err.write(notices(result))
        else:
            self.out.write(prefixed(label, result.stdout))
            self.out.flush()
            self.err.write(prefixed(label, result.stderr) + prefixed(label, notices(result)))
        self.err.flush()


def make_plan(args, targets):
    from skypty.client.cmdline import remote_argv
    from skypty.client.reach import exec_env, no_key_flags, read_stdin, timeout_ms
    from skypty.durations import DurationError, parse_duration

    from skypty.client.reach import PROXY_ANSWER_TIMEOUT
    from skypty.client.transport import CONNECT_TIMEOUT

    # Unless told, as for one host: 10 s to connect directly; the local host
    # bounds its own dials (skynet 5 s, dmsg 30 s) and its answer says why.
    connect_timeout, proxy_timeout = CONNECT_TIMEOUT, PROXY_ANSWER_TIMEOUT
    if args.connect_timeout is not None:
        try:
            connect_timeout = proxy_timeout = max(parse_duration(args.connect_timeout, "--connect-timeout"), 0.1)
        except DurationError as e:
            raise SkyptyError(str(e)) from None
    plan = Plan(command=remote_argv(args.command), timeout_ms=timeout_ms(args), connect_timeout=connect_timeout,
                proxy_timeout=proxy_timeout, stdin=read_stdin(args), env=exec_env(), dmsg_port=args.port)
    if any(t.direct for t in targets):
        from skypty.client.identity import resolve_secret_key

        plan.sk = resolve_secret_key(args)
    if not all(t.direct for t in targets):
        from skypty.client.identity import control_socket

        no_key_flags(args, "exec through the local host (a PK, or a name without an address)")
        plan.control = control_socket(args)
    return plan


def fleet_targets(args):
    from skypty.client.hosts import Target, expand_targets, split_address

    targets = expand_targets(args.targets)
    if args.via:  # one host, reached directly
        from skypty.client.errors import usage_error

        if len(targets) != 1 or targets[0].direct:
            raise usage_error("--via takes one host given by PK; with many hosts use PK@HOST[:PORT] each")
        via = args.via[len("tcp://"):] if args.via.startswith("tcp://") else args.via
        pk, _, address = via.partition("@")
        if pk.lower() != targets[0].pk:
            raise usage_error("--via names a different host key than PK")
        host, port = split_address(address)
        targets = [Target(targets[0].pk, targets[0].name, host, port, text=targets[0].text)]
    if args.scheme:  # --scheme pins every host that goes through the local host
        targets = [t if t.direct else Target(t.pk, t.name, scheme=args.scheme, text=t.text) for t in targets]
    return targets


def cmd_fleet_exec(args):
    """exec with several hosts, an @group, or --json.  Exit 0 only if every host exited 0."""
    targets = fleet_targets(args)
    plan = make_plan(args, targets)
    dial = max([plan.connect_timeout] + [plan.proxy_timeout for t in targets if not t.direct])
    deadline = dial + plan.timeout_ms / 1000.0 + RESULT_GRACE
    mode = "json" if args.json else ("group" if args.group else "lines")
    printer = Printer(mode, sys.stdout.buffer, sys.stderr.buffer)
    # Import everything a worker needs here: imports in many threads at once
    # serialise on the import lock anyway, and a failure is clearer here.
    import skypty.client.classic  # noqa: F401
    import skypty.client.errors  # noqa: F401
    import skypty.client.rpc  # noqa: F401
    import skypty.wire.noise  # noqa: F401

    results = [None] * len(targets)

    def on_result(index, result):
        results[index] = result
        printer(result)

    run_all(targets, lambda target, slot: run_one(target, plan, slot), args.parallel, deadline, on_result)
    if mode != "json":
        sys.stderr.write(summary(results))
        sys.stderr.flush()
    return fleet_exit_status(results)

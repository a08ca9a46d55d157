"""One-shot exec start-up: `skypty-client exec PK -- true` over dmsg through
the local host, against the interpreter's own start.

    python3 benchmarks/bench_startup.py [--runs 40] [--reference-ms 15,32]

Starts `twistd skypty-dmsg` and two hosts A and B (B whitelists A), compiles
skypty's bytecode first (a pip install does; this sandbox sets
PYTHONDONTWRITEBYTECODE), then alternates, run after run:

  * `python3 -c pass` and `python3 -S -c pass`: the interpreter floor, with
    and without site (here site also runs a sandbox .pth that imports
    certifi, ~20-30 ms no user machine pays);
  * `skypty-client exec B --cliaddr A -- true`: the whole client process,
    and the same under `python3 -S` (skypty and site-packages from
    PYTHONPATH, no .pth file run): what it costs
    without the sandbox's .pth, which also imports for us modules the
    client would otherwise pay for (re, enum, functools...);
  * the same exec done in-process by this script (connect, proxy request,
    pty.Exec, reply): the hosts' share, no interpreter start at all.

It prints medians, the client's time above `python3 -c pass`, and the
`-S` run (what a user's machine would see, less the ~1-3 ms of a site
without the sandbox's .pth) against the reference Go client's figures
(measured under `script`, minus `script` alone, by the lead on this
machine: 15-32 ms).
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.hosts import REPO, env, wait_for  # noqa: E402
from tests.test_dmsg_e2e import DmsgNetwork, dmsg_host  # noqa: E402

PYTHON = os.path.realpath(sys.executable)  # not a pyenv shim: that is a bash script
CLIENT = os.path.join(os.path.dirname(sys.executable), "skypty-client")


CPU = {}  # argv key -> CPU seconds (user + system) of each run: steadier than wall time on a busy machine


def wall(argv, environ, key=None):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=environ)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if key:
        CPU.setdefault(key, []).append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return elapsed


def in_process_exec(cli, pk):
    """The hosts' share: the same exec from an already running interpreter."""
    from skypty.client.rpc import BlockingRPC, request_service
    from skypty.client.transport import connect_control
    from skypty.wire import requestline
    from skypty.wire import types as T

    start = time.perf_counter()
    channel = connect_control("unix", cli, 60)
    try:
        rpc = BlockingRPC(channel, request_service(channel, requestline.proxy_uri(pk, 22)))
        result = rpc.call("pty.Exec", T.CommandExecReq.cls(name="true", timeout_ms=30000),
                          T.CommandExecReq, T.CommandExecResult)
    finally:
        channel.close()
    assert result.exit_code == 0
    return time.perf_counter() - start


def ms(values):
    return statistics.median(values) * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--reference-ms", default="15,32",
                    help="the reference Go client's exec time over dmsg (low,high), measured by hand")
    args = ap.parse_args()
    ref = [float(x) for x in args.reference_ms.split(",")]
    compile_env = dict(os.environ)
    compile_env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([PYTHON, "-m", "compileall", "-q", os.path.join(REPO, "skypty")], check=True, env=compile_env)
    tmp = tempfile.mkdtemp(prefix="skypty-startup-bench-")
    network = DmsgNetwork(tmp).start()
    a = dmsg_host(tmp, "a", network)
    b = dmsg_host(tmp, "b", network, whitelist=[a.pk])
    environ = env()
    try:
        a.start()
        b.start()
        wait_for(lambda: network.joined(a) and network.joined(b), what="both hosts to join")
        exec_argv = [CLIENT, "exec", b.pk, "--cliaddr", a.cli, "--", "true"]
        for _ in range(3):  # warm: the first dial fetches B's discovery entry, caches fill
            wall(exec_argv, environ)
            in_process_exec(a.cli, b.pk)
        exec_s_argv = [PYTHON, "-S"] + exec_argv
        # -S skips every .pth: skypty comes from PYTHONPATH (env()), its
        # dependencies from site-packages named there too.
        environ_s = dict(environ)
        environ_s["PYTHONPATH"] += os.pathsep + sysconfig.get_paths()["purelib"]
        t = {"pass": [], "pass -S": [], "exec": [], "exec -S": [], "in-process": []}
        for _ in range(args.runs):
            t["pass"].append(wall([PYTHON, "-c", "pass"], environ, "pass"))
            t["exec"].append(wall(exec_argv, environ, "exec"))
            t["pass -S"].append(wall([PYTHON, "-S", "-c", "pass"], environ, "pass -S"))
            t["exec -S"].append(wall(exec_s_argv, environ_s, "exec -S"))
            t["in-process"].append(in_process_exec(a.cli, b.pk))
        above = [e - p for e, p in zip(t["exec"], t["pass"])]
        above_s = [e - p for e, p in zip(t["exec -S"], t["pass -S"])]
        user = ms(t["exec -S"])
        print(f"exec `true` on B through A's control socket over dmsg, median of {args.runs} alternating runs:")
        print(f"  python3 -c pass                         : {ms(t['pass']):6.1f} ms")
        print(f"  skypty-client exec B -- true            : {ms(t['exec']):6.1f} ms")
        print(f"    above python3 -c pass                 : {ms(above):6.1f} ms")
        print(f"  python3 -S -c pass                      : {ms(t['pass -S']):6.1f} ms")
        print(f"  python3 -S skypty-client exec B -- true : {ms(t['exec -S']):6.1f} ms")
        print(f"    above python3 -S -c pass              : {ms(above_s):6.1f} ms")
        print(f"  the hosts' share (the exec in-process)  : {ms(t['in-process']):6.1f} ms")
        print(f"  the client's own share (-S, above the interpreter, less the hosts): "
              f"{ms(above_s) - ms(t['in-process']):.1f} ms")
        print(f"  CPU time (user+sys) of the process, median: python3 -c pass {ms(CPU['pass']):.1f} ms, "
              f"exec {ms(CPU['exec']):.1f} ms; -S: {ms(CPU['pass -S']):.1f} ms, exec {ms(CPU['exec -S']):.1f} ms "
              f"(the client's CPU above the interpreter: {ms(CPU['exec -S']) - ms(CPU['pass -S']):.1f} ms)")
        print(f"  ratio of the -S exec to the reference Go client ({ref[0]:g}-{ref[-1]:g} ms): "
              f"{user / ref[-1]:.1f}-{user / ref[0]:.1f}x (target <= 1.5x)")
    finally:
        for h in (a, b):
            h.stop()
        network.stop()


if __name__ == "__main__":
    main()

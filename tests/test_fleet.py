"""exec on many hosts: the pure pieces (output, JSON, summary, the
scheduler), then a fleet of 20 targets on real hosts: direct TCP and dmsg,
one offline, one refusing, one silent."""

import base64
import json
import os
import re
import socket
import subprocess
import threading
import time

import jsonschema
import pytest

from skypty.client import fleet as F
from skypty.client.hosts import Target
from skypty.keys import generate_keypair
from tests.hosts import CLIENT, REPO, Host, env, free_port, wait_for

SCHEMA_PATH = os.path.join(REPO, "docs", "exec-result.schema.json")
PK = generate_keypair()[0].hex()


def schema():
    with open(SCHEMA_PATH) as f:
        return json.load(f)


def validate(obj):
    jsonschema.Draft202012Validator.check_schema(schema())
    jsonschema.Draft202012Validator(schema()).validate(obj)


# -- pure pieces -----------------------------------------------------------------------------------------

def test_lines_are_prefixed_with_the_host_and_a_last_line_is_ended():
    assert F.prefixed("web1", b"a\nb\n") == b"web1: a\nweb1: b\n"
    assert F.prefixed("web1", b"a\n\nb") == b"web1: a\nweb1: \nweb1: b\n"
    assert F.prefixed("web1", b"") == b""
    assert F.prefixed("web1", b"\xff\n") == b"web1: \xff\n"  # bytes pass through untouched


def test_json_result_is_text_when_utf8_else_base64_and_fits_the_schema():
    ok = F.HostResult(Target(PK, "web1", "10.0.0.1", 2022), exit_code=0, stdout="héllo\n".encode(),
                      stderr=b"\xff\xfe", duration_ms=12)
    obj = F.result_json(ok)
    assert obj == {"key": PK, "name": "web1", "address": "10.0.0.1:2022", "transport": "tcp", "exit_code": 0,
                   "stdout": "héllo\n", "stdout_encoding": "utf-8",
                   "stderr": base64.b64encode(b"\xff\xfe").decode(), "stderr_encoding": "base64",
                   "stdout_truncated": False, "stderr_truncated": False, "timed_out": False,
                   "duration_ms": 12, "error": None}
    validate(obj)
    down = F.HostResult(Target(PK, scheme="skynet"), error="host … is not in dmsg discovery", duration_ms=3)
    obj = F.result_json(down)
    assert (obj["name"], obj["address"], obj["transport"], obj["exit_code"]) == (None, None, "skynet", None)
    validate(obj)
    validate(F.result_json(F.HostResult(Target(PK), exit_code=124, timed_out=True)))
    with pytest.raises(jsonschema.ValidationError):  # the schema is strict: it can fail
        validate(dict(obj, exit_code="0"))
    with pytest.raises(jsonschema.ValidationError):
        validate(dict(obj, extra=1))


def test_summary_and_exit_status():
    results = [F.HostResult(Target(PK, "web1"), exit_code=0, duration_ms=1500),
               F.HostResult(Target(PK, "web2"), exit_code=124, timed_out=True, duration_ms=30000),
               F.HostResult(Target(PK, "web3"), error="connection refused", duration_ms=2)]
    assert F.summary(results) == (
        "HOST  EXIT  TIME    TIMED OUT  ERROR\n"
        "web1  0     1.50s   no\n"
        "web2  124   30.00s  yes\n"
        "web3  -     0.00s   no         connection refused\n"
        "3 hosts: 1 exited 0, 1 failed or timed out, 1 unreachable or refused\n")
    assert F.fleet_exit_status(results) == 1
    assert F.fleet_exit_status(results[:1]) == 0
    assert F.fleet_exit_status([]) == 1


def test_the_scheduler_keeps_to_parallel_and_gives_up_on_a_host_at_its_deadline():
    targets = [Target(PK, f"h{i}") for i in range(6)]
    release, stuck_aborted = threading.Event(), threading.Event()
    lock, state = threading.Lock(), {"now": 0, "max": 0}


    def work(target, slot):
        if target.name == "h0":  # never answers: only the deadline ends it
            original = slot.abort
            slot.abort = lambda: (original(), stuck_aborted.set())
            release.wait(30)
            return F.HostResult(target, exit_code=0)  # late: must be ignored
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.05)  # work that takes a while, so that workers overlap
        with lock:
            state["now"] -= 1
        return F.HostResult(target, exit_code=0)

    seen = []
    start = time.monotonic()
    F.run_all(targets, work, parallel=2, deadline=1.0, on_result=lambda i, r: seen.append((i, r)))
    elapsed = time.monotonic() - start
    release.set()
    assert stuck_aborted.is_set()
    assert sorted(i for i, _ in seen) == list(range(6))  # each host reported exactly once
    assert seen[-1][0] == 0 and "no result within 1s" in seen[-1][1].error  # the stuck one, last
    assert state["max"] == 1  # one slot held by the stuck host, the other shared by the rest
    assert 1.0 <= elapsed < 5


# -- a real fleet ------------------------------------------------------------------------------------------

class Fleet:
    pass


def _client(fleet, *args, input=None, timeout=120):
    e = env()
    e["XDG_CONFIG_HOME"] = str(fleet.xdg)
    start = time.monotonic()
    r = subprocess.run(CLIENT + list(args), capture_output=True, env=e, cwd=fleet.a.dir, input=input,
                       timeout=timeout)
    r.elapsed = time.monotonic() - start
    return r


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A runs the dmsg network; B and C join it and let A in; D lets nobody
    in (refusing); 'offline' is a key at a port nothing listens on; 'silent'
    accepts TCP and never says a word."""
    tmp = tmp_path_factory.mktemp("fleet")
    f = Fleet()
    f.xdg = tmp / "xdg"
    f.a = Host(tmp, "a").start()
    hosts = [f.a]
    silent = socket.socket()
    try:
        for name in ("b", "c"):
            h = Host(tmp, name, embedded=False, discovery_port=f.a.discovery_port)
            h.data["pty"]["whitelist"] = [f.a.pk]
            h.write_config()
            hosts.append(h.start())
        f.b, f.c = hosts[1], hosts[2]
        f.d = Host(tmp, "d").start()
        hosts.append(f.d)
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        f.silent_port = silent.getsockname()[1]
        f.live = {}  # name -> host
        for host, transport, count in ((f.a, "tcp", 5), (f.b, "tcp", 4), (f.c, "tcp", 3),
                                       (f.b, "dmsg", 3), (f.c, "dmsg", 3)):
            for i in range(count):
                name = f"{host.dir[-1]}-{transport}-{i}"
                f.live[name] = host
                extra = ["--addr", f"127.0.0.1:{host.tcp_port}"] if transport == "tcp" else ["--transport", "dmsg"]
                group = ["--group", "edge"] if i == 0 else []
                assert _client(f, "hosts", "add", name, host.pk, *extra, *group).returncode == 0
        assert _client(f, "hosts", "add", "refusing", f.d.pk, "--addr", f"127.0.0.1:{f.d.tcp_port}").returncode == 0
        assert _client(f, "hosts", "add", "offline", PK, "--addr", f"127.0.0.1:{free_port()}").returncode == 0
        assert _client(f, "hosts", "add", "silent", PK, "--addr", f"127.0.0.1:{f.silent_port}").returncode == 0
        for h in (f.b, f.c):
            wait_for(lambda: _client(f, "exec", f"{h.dir[-1]}-dmsg-0", "-i", f.a.config_path, "--",
                                     "true").returncode == 0, timeout=60, what="dmsg between the hosts")
        yield f
    finally:
        silent.close()
        for h in hosts:
            h.stop()


SLEEP = 3


def test_twenty_hosts_run_concurrently_with_correct_output_summary_and_status(fleet):
    f = fleet
    names = list(f.live) + ["offline", "refusing"]
    assert len(names) == 20
    command = ["--", "sh", "-c", f"sleep {SLEEP}; echo pid $PPID; echo err >&2"]
    one = _client(f, "exec", "a-tcp-0", "-i", f.a.config_path, *command)
    assert one.returncode == 0
    r = _client(f, "exec", *names, "-i", f.a.config_path, "--parallel", "20", *command)
    assert r.returncode == 1  # not every host exited 0
    out, err = r.stdout.decode(), r.stderr.decode()
    for name, host in f.live.items():
        assert f"{name}: pid {host.proc.pid}\n" in out, name
        assert f"{name}: err\n" in err, name
    assert sorted(out.splitlines()) == sorted(f"{n}: pid {h.proc.pid}" for n, h in f.live.items())
    rows = {line.split()[0]: line for line in err.splitlines() if re.match(r"[a-z]+(-[a-z]+-\d)?\s", line)}
    for name in f.live:
        assert re.match(rf"{name}\s+0\s+\d+\.\d\ds\s+no$", rows[name]), rows[name]
    assert re.search(r"offline\s+-\s+\S+\s+no\s+cannot connect to 127\.0\.0\.1:\d+: Connection refused", err)
    assert re.search(rf"refusing\s+-\s+\S+\s+no\s+not authorized: host {f.d.pk} does not whitelist your key "
                     f"{f.a.pk}", err)
    assert err.endswith("20 hosts: 18 exited 0, 0 failed or timed out, 2 unreachable or refused\n")
    # Concurrent: about one host's time, not the sum of them (18 x SLEEP s).
    assert r.elapsed < one.elapsed + 6, (r.elapsed, one.elapsed)


def test_parallel_caps_the_hosts_in_flight(fleet):
    f = fleet
    r = _client(f, "exec", "a-tcp-0", "a-tcp-1", "b-tcp-0", "c-tcp-0", "-i", f.a.config_path,
                "--parallel", "2", "--", "sleep", "1")
    assert r.returncode == 0, r.stderr
    assert r.elapsed >= 2.0  # two waves of two


def test_a_silent_host_times_out_alone(fleet):
    f = fleet
    r = _client(f, "exec", "silent", "a-tcp-0", "b-dmsg-0", "-i", f.a.config_path, "--connect-timeout", "1s",
                "--", "echo", "hi")
    assert r.returncode == 1
    assert sorted(r.stdout.decode().splitlines()) == ["a-tcp-0: hi", "b-dmsg-0: hi"]
    assert re.search(r"silent\s+-\s+1\.\d\ds\s+no\s+the host at 127\.0\.0\.1:\d+ did not complete the handshake "
                     r"within 1s", r.stderr.decode()), r.stderr.decode()
    assert r.elapsed < 8


def test_json_results_validate_against_the_documented_schema(fleet):
    f = fleet
    r = _client(f, "exec", "@edge", "offline", "refusing", "-i", f.a.config_path, "--json", "--timeout", "2s",
                "--", "sh", "-c", "printf 'caf\\303\\251\\n'; printf '\\377' >&2; exit 4")
    assert r.returncode == 1
    assert r.stderr == b""  # no summary: everything is in the objects
    objects = [json.loads(line) for line in r.stdout.decode().splitlines()]
    for obj in objects:
        validate(obj)
    by_name = {o["name"]: o for o in objects}
    assert sorted(by_name) == sorted(["a-tcp-0", "b-tcp-0", "c-tcp-0", "b-dmsg-0", "c-dmsg-0", "offline",
                                      "refusing"])
    a = by_name["a-tcp-0"]
    assert (a["key"], a["address"], a["transport"], a["exit_code"], a["stdout"], a["stdout_encoding"]) == (
        f.a.pk, f"127.0.0.1:{f.a.tcp_port}", "tcp", 4, "café\n", "utf-8")
    assert (a["stderr"], a["stderr_encoding"], a["error"], a["timed_out"]) == ("/w==", "base64", None, False)
    assert (by_name["b-dmsg-0"]["transport"], by_name["b-dmsg-0"]["address"]) == ("dmsg", None)
    off = by_name["offline"]
    assert off["exit_code"] is None and off["error"].startswith("cannot connect to 127.0.0.1:")
    # a timed-out command
    r = _client(f, "exec", "b-tcp-0", "-i", f.a.config_path, "--json", "--timeout", "1s", "--", "sleep", "10")
    (obj,) = [json.loads(line) for line in r.stdout.decode().splitlines()]
    validate(obj)
    assert (r.returncode, obj["timed_out"], obj["exit_code"], obj["error"]) == (1, True, 124, None)
    # one host by key, --json: the same schema
    r = _client(f, "exec", f.b.target, "-i", f.a.config_path, "--json", "--", "true")
    (obj,) = [json.loads(line) for line in r.stdout.decode().splitlines()]
    validate(obj)
    assert (r.returncode, obj["name"], obj["exit_code"]) == (0, None, 0)


def test_group_prints_one_block_per_host(fleet):
    f = fleet
    r = _client(f, "exec", "a-tcp-0", "b-dmsg-0", "offline", "--group", "-i", f.a.config_path, "--",
                "sh", "-c", "echo one; echo two")
    assert r.returncode == 1
    out = r.stdout.decode()
    for name in ("a-tcp-0", "b-dmsg-0"):
        assert re.search(rf"== {name} \(exit 0, \d+\.\d\ds\) ==\none\ntwo\n", out), out
    assert re.search(r"== offline \(unreachable, \d+\.\d\ds\) ==\n", out)


def test_stdin_without_stdin_flag_is_named_not_dropped_silently(fleet, tmp_path):
    f = fleet
    data = tmp_path / "data"
    data.write_bytes(b"data\n")  # a file, not a pipe: its bytes are there before the client looks
    e = env()
    e["XDG_CONFIG_HOME"] = str(f.xdg)
    with open(data, "rb") as stdin:
        r = subprocess.run(CLIENT + ["exec", "a-tcp-0", "b-tcp-0", "-i", f.a.config_path, "--", "cat"],
                           stdin=stdin, capture_output=True, env=e, cwd=f.a.dir, timeout=120)
    assert r.returncode == 0
    assert r.stderr.startswith(b"skypty-client: stdin is not sent to several hosts, or with --json "
                               b"(--stdin sends it to each, up to 1 MiB)\n"), r.stderr
    r = _client(f, "exec", "a-tcp-0", "b-tcp-0", "-i", f.a.config_path, "--stdin", "--", "cat", input=b"data\n")
    assert r.returncode == 0 and b"stdin is not sent" not in r.stderr
    assert sorted(r.stdout.splitlines()) == [b"a-tcp-0: data", b"b-tcp-0: data"]


def test_many_hosts_need_the_command_after_dashes(fleet):
    r = _client(fleet, "exec", "a-tcp-0", "b-tcp-0", "uname", "-a")
    assert (r.returncode, r.stderr.decode()) == (
        2, "skypty-client: put the remote command after --: skypty-client exec a-tcp-0 b-tcp-0 -- uname -a\n")

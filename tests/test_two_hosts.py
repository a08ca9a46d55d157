"""The guide's two-host recipe, run as it is written (so it cannot rot).

Only the fixed ports and socket paths are swapped for free ones, because
other tests and hosts share this machine; the commands (`skypty-client`,
`twistd`, from PATH) are the guide's.  PATH starts with two small scripts of
those names that run this checkout with this interpreter: the tests need no
installed skypty (scripts/install-test-deps installs none), and an installed
one is not what is under test.
"""

import os
import re
import shlex
import signal
import subprocess
import sys

from tests.hosts import REPO, env, free_port, wait_for

RECIPE_MARK = "<!-- recipe: two-hosts"


def recipe_commands():
    with open(os.path.join(REPO, "docs", "guide.md")) as f:
        guide = f.read()
    block = re.search(re.escape(RECIPE_MARK) + r"[^\n]*\n```sh\n(.*?)```", guide, re.S)
    assert block, "the guide's two-host recipe is missing"
    text = block.group(1).replace("\\\n", " ")  # continuation lines
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def localise(commands, tmp):
    """The recipe's fixed ports and sockets -> free ones in *tmp*."""
    swaps = {"/tmp/a.sock": f"{tmp}/a.sock", "/tmp/b.sock": f"{tmp}/b.sock"}
    for port in ("9090", "8081", "2022", "2023", "8080"):
        swaps[f"127.0.0.1:{port}"] = f"127.0.0.1:{free_port()}"
    text = "\n".join(commands)
    for old, new in swaps.items():
        assert old in text, f"the recipe no longer mentions {old}; update this test"
        text = text.replace(old, new)
    return text.splitlines()


CHECKOUT_COMMANDS = {
    "skypty-client": [sys.executable, "-m", "skypty.client.main"],
    "twistd": [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"],
}


def checkout_env(bin_dir):
    """env() with `skypty-client` and `twistd` from this checkout first on PATH."""
    os.makedirs(bin_dir, exist_ok=True)
    for name, argv in CHECKOUT_COMMANDS.items():
        path = os.path.join(bin_dir, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\nexec " + " ".join(map(shlex.quote, argv)) + ' "$@"\n')
        os.chmod(path, 0o755)
    e = env()
    e["PATH"] = bin_dir + os.pathsep + e.get("PATH", "")
    return e


def run(command, cwd, timeout=60):
    environ = checkout_env(os.path.join(cwd, "bin"))
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=environ, capture_output=True, timeout=timeout)


def pid_from(path):
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def alive(pid):
    return pid is not None and os.path.exists(f"/proc/{pid}") and \
        "zombie" not in open(f"/proc/{pid}/status").read()


def test_the_guides_two_host_recipe_runs(tmp_path):
    tmp = str(tmp_path)
    commands = localise(recipe_commands(), tmp)
    assert [c.split()[0] for c in commands] == ["skypty-client", "twistd", "skypty-client", "twistd",
                                                "skypty-client", "kill"]
    try:
        for command in commands[:4]:
            r = run(command, tmp)
            assert r.returncode == 0, (command, r.stderr)
        # B registers in A's discovery just after it starts: retry the exec until then.
        exec_line, results = commands[4], []

        def exec_worked():
            results.append(run(exec_line, tmp))
            return results[-1].returncode == 0

        wait_for(exec_worked, timeout=60, what="exec from A to B over dmsg")
        assert results[-1].stdout == subprocess.run(["uname", "-a"], capture_output=True).stdout
        pids = [pid_from(os.path.join(tmp, f"{name}.pid")) for name in "ab"]
        r = run(commands[5], tmp)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: not any(alive(pid) for pid in pids), what="both hosts to stop")
        with open(os.path.join(tmp, "b.log")) as f:
            b_log = f.read()
        pk_a = run("skypty-client config pk -i a.json", tmp).stdout.decode().strip()
        assert f"accepted {pk_a} on dmsg" in b_log
    finally:
        for name in "ab":
            pid = pid_from(os.path.join(tmp, f"{name}.pid"))
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

"""ssh -tt, mosh and skypty-client shell side by side on an emulated link
(tests/linkemu.py: two network namespaces and a user-space relay; no netem).

    sudo python3 benchmarks/bench_links.py [--quick] [--conditions 200ms,loss]
                                           [--tools ssh,mosh,skypty,skypty-dmsg]

Per link condition (200 ms RTT; 50 ms each way with 2 % loss) it prints the
rows of issue #23's table:

  * `cat` of a 2 MB text file on an interactive shell, until the prompt returns;
  * Ctrl-C during `while :; do cat f; done`, until the prompt returns;
  * a 30 s outage (a command typed as the link dies; when its output appears
    after the link returns; what the client showed meanwhile);
  * a 3-minute outage against a default skypty host (no persistent sessions);
  * a 60 s outage with persistent_sessions (skypty only): when output resumes,
    and whether any line of a ticking counter was lost or doubled;
  * the client's address changes under a ticking counter: when output resumes.

All clients are open at once during the outage rows, so they meet the same
outage.  The hosts (a throwaway sshd, two `twistd skypty` hosts, one with
persistent sessions, whose embedded dmsg server relays) run in the host
namespace; the clients in the client namespace, driven with pexpect.
skypty-dmsg is `skypty-client start PK` through a local host in the client
namespace, which reaches the remote host over dmsg through that server.  mosh is used when installed (Debian:
`apt-get install mosh`).  --quick shortens the outages (10 s / 40 s / 15 s)
and the waits, so the 3-minute row then shows a 40 s outage.
"""

import argparse
import os
import re
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests import linkemu  # noqa: E402
from tests.linkhosts import DISCOVERY_PORT, HAVE_MOSH, PROMPT, LinkHost, LinkSshd, Term, text_file  # noqa: E402

CONDITIONS = {"200ms": dict(delay_ms=100, loss=0.0), "loss": dict(delay_ms=50, loss=0.02, seed=23)}
CONDITION_NAMES = {"200ms": "200 ms RTT", "loss": "50 ms each way + 2% loss"}
TICKER = "i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.2; done\r"
TICK = re.compile(r"tick-(\d+)")
SKYPTY = ("skypty", "skypty-dmsg")
COLUMNS = {"skypty": "skypty (Noise TCP)", "skypty-dmsg": "skypty (dmsg, relayed)"}


class Bench:
    def __init__(self, link, tmp, tools, args):
        self.link, self.tmp, self.tools, self.args = link, tmp, tools, args
        self.one_way = link.delay_ms / 1000.0
        self.path = text_file(os.path.join(tmp, "f.txt"), 2 * 1000 * 1000)
        with open(self.path) as f:
            self.last_line = f.read().rstrip("\n").rsplit("\n", 1)[1][:30]
        self.sshd = LinkSshd(link, tmp).start() if {"ssh", "mosh"} & set(tools) else None
        # skypty-dmsg: a local host in the client namespace dials over dmsg, through
        # the dmsg server embedded in the default host (a relayed path across the link)
        self.local = None
        if "skypty-dmsg" in tools:
            self.local = LinkHost(link, tmp, "local", side="client",
                                  discovery=f"http://{link.host_ip}:{DISCOVERY_PORT}")
        allowed = [self.local.pk] if self.local else []
        self.host = LinkHost(link, tmp, "default", whitelist=allowed).start()
        self.phost = LinkHost(link, tmp, "persistent", persistent=True, port_offset=100,
                              discovery=self.host.discovery_url, whitelist=allowed).start()
        if self.local:
            self.local.start()
            for pk in (self.local.pk, self.host.pk, self.phost.pk):
                self.local.wait_joined(pk)
        self.probe = 1000

    def open(self, tool, screen=False):
        argv = {"ssh": lambda: self.sshd.ssh_argv(), "mosh": lambda: self.sshd.mosh_argv(),
                "skypty": lambda: self.host.shell_argv(),
                "skypty-persistent": lambda: self.phost.shell_argv(),
                "skypty-dmsg": lambda: self.local.start_argv(self.host.pk),
                "skypty-dmsg-persistent": lambda: self.local.start_argv(self.phost.pk)}[tool]()
        term = Term(self.link, argv, tool, screen=screen or tool == "mosh")
        if term.at_prompt(60) is None:
            term.close()
            raise SystemExit(f"{tool}: no prompt within 60 s:\n{term.text()[-2000:]}")
        return term

    # -- throughput and interrupt

    def bulk(self, tool):
        term = self.open(tool)
        try:
            term.skip_to_end()
            start = time.monotonic()
            term.send(f"cat {self.path}\r")
            got = term.at_prompt(180, after=self.last_line)
            bulk = "no prompt in 180 s" if got is None else f"{got - start:.2f} s"
            term.skip_to_end()
            term.send(f"while :; do cat {self.path}; done\r")
            if term.wait_output("quick brown", 30) is None:
                return bulk, "the flood did not start"
            time.sleep(1.0)  # let the flood fill every buffer on the path: what ^C has to cut through
            term.skip_to_end()
            start = time.monotonic()
            term.send("\x03")
            got = term.at_prompt(120)
            return bulk, "no prompt in 120 s" if got is None else f"{got - start:.2f} s"
        finally:
            term.close()

    # -- outages

    def outage(self, tools, seconds, resume_limit):
        """Open every tool, kill the link for *seconds*, type a command as it
        dies; -> {tool: cell text}."""
        terms = {tool: self.open(tool, screen=True) for tool in tools}
        try:
            for term in terms.values():
                term.skip_to_end()
            marks = {tool: term.size for tool, term in terms.items()}
            self.link.down()
            down_at = time.monotonic()
            watches = {}
            for tool, term in terms.items():
                self.probe += 1
                watches[tool] = term.watch_output(f"ALIVE-{self.probe}")
                term.send(f"echo ALIVE-$(({self.probe - 1}+1))\r")
            while time.monotonic() < down_at + seconds:
                time.sleep(0.25)  # the outage itself
            self.link.up()
            up_at = time.monotonic()
            cells = {}
            for tool, term in terms.items():
                arrived = term.wait_output_watch(watches[tool], max(0.0, up_at + resume_limit - time.monotonic()))
                cells[tool] = self.describe(term, marks[tool], down_at, up_at, arrived, resume_limit)
            return cells
        finally:
            for term in terms.values():
                term.close()

    def describe(self, term, mark, down_at, up_at, arrived, limit):
        said = []
        notice = self.status_during(term, mark, down_at, up_at)
        if arrived is not None:
            said.append(f"survives (resumes in {arrived - up_at:.1f} s)")
        else:
            lost = term.arrival_of("connection lost", mark)
            if lost is not None and lost < up_at:
                said.append(f"**shell lost**: \"connection lost\" {lost - down_at:.0f} s into the outage")
            elif lost is not None:
                said.append(f"**shell lost**: \"connection lost\" {lost - up_at:.0f} s after the link came back")
            elif term.closed:
                said.append("**shell lost** (client exited)")
            else:
                said.append(f"**no output {limit:.0f} s after the link came back**")
        if notice:
            said.append(notice)
        return "; ".join(said)

    def status_during(self, term, mark, down_at, up_at):
        """What the client itself told the user while the link was down."""
        if term.name == "mosh":
            at = term.arrival_of("Last contact", mark)
            return f"shows \"Last contact…\" after {at - down_at:.0f} s" if at and at < up_at else ""
        text = term.text(mark)
        # "[skypty: connection lost]" is the shell's end, told in the cell already
        notes = [n for n in re.findall(r"\[skypty: [^\]]*\]", text) if n != "[skypty: connection lost]"]
        if notes:
            at = term.arrival_of(notes[0], mark)
            return f"said \"{notes[0]}\" after {at - down_at:.0f} s" if at < up_at else f"then \"{notes[0]}\""
        return ""

    def persistent_outage(self, tool, seconds, resume_limit):
        term = self.open(tool + "-persistent", screen=True)
        try:
            term.skip_to_end()
            start = term.size
            term.send(TICKER)
            if term.wait_for("tick-5", 30) is None:
                return "the counter did not start"
            self.link.down()
            down_at = time.monotonic()
            while time.monotonic() < down_at + seconds:
                time.sleep(0.25)  # the outage itself
            self.link.up()
            up_at = time.monotonic()
            deadline = up_at + resume_limit
            resumed = None
            while resumed is None and time.monotonic() < deadline and not term.closed:
                resumed = term.arrival_of("tick-", start, not_before=up_at)
                if resumed is None:
                    time.sleep(0.05)  # polling with a deadline
            if resumed is None:
                return f"**no output {resume_limit:.0f} s after the link came back**"
            time.sleep(2.0)  # let a few more ticks arrive, then check the sequence
            term.send("\x03")
            term.at_prompt(30)
            ticks = [int(n) for n in TICK.findall(term.text(start))]
            gaps = sum(1 for a, b in zip(ticks, ticks[1:]) if b != a + 1)
            lost = re.search(r"(\d+) bytes of output were lost", term.text(start))
            verdict = "nothing lost or doubled" if not gaps and not lost else \
                f"{gaps} breaks in the counter" + (f", {lost.group(1)} bytes lost" if lost else "")
            return f"output resumes **{resumed - up_at:.1f} s** after the link returns; {verdict}"
        finally:
            term.close()

    def roaming(self, tools, limit):
        terms = {tool: self.open(tool, screen=True) for tool in tools}
        try:
            for term in terms.values():
                term.send(TICKER)
            for tool, term in terms.items():
                if term.wait_output("tick-5", 30) is None:
                    raise SystemExit(f"{tool}: the counter did not start")
            changed_at = time.monotonic()
            self.link.change_client_address()
            time.sleep(self.one_way + 0.15)  # what was in flight has arrived: snapshot after it
            watches = {}
            for tool, term in terms.items():
                before = term.read_screen(lambda screen: self.top_tick(None, screen))
                watches[tool] = term.watch_screen(lambda screen, b=before: self.top_tick(None, screen) > b)
            cells = {}
            for tool, term in terms.items():
                arrived = term.wait_watch(watches[tool], max(0.0, changed_at + limit - time.monotonic()))
                if arrived is not None:
                    cells[tool] = f"continues in {arrived - changed_at:.1f} s"
                elif term.closed:
                    cells[tool] = "**client exited** (no output since)"
                else:
                    cells[tool] = f"**hangs** (no output for {limit:.0f} s)"
                notes = re.findall(r"\[skypty: [^\]]*\]", term.text(0))
                if notes and tool.startswith("skypty") and "session" not in notes[-1][:20]:
                    cells[tool] += f"; said \"{notes[-1]}\""
            return cells
        finally:
            for term in terms.values():
                term.close()

    @staticmethod
    def top_tick(term, screen=None):
        screen = screen or term.screen
        return max((int(n) for line in screen.display for n in TICK.findall(line)), default=0)


def run_condition(name, tools, args):
    rows = []
    with linkemu.Link(**CONDITIONS[name]) as link:
        tmp = tempfile.mkdtemp(prefix="skypty-links-")
        try:
            bench = Bench(link, tmp, tools, args)
            rtts = [r for r in link.ping(count=5, interval=0.05) if r is not None]
            print(f"## {CONDITIONS_TITLE(name)}: ping RTT through the relay "
                  f"{min(rtts) * 1000:.0f}-{max(rtts) * 1000:.0f} ms", flush=True)
            bulk, ctrl_c = {}, {}
            for tool in tools:
                bulk[tool], ctrl_c[tool] = bench.bulk(tool)
                print(f"  {tool}: cat 2 MB {bulk[tool]}, Ctrl-C {ctrl_c[tool]}", flush=True)
            rows.append(("`cat` a 2 MB text file, until the prompt returns", bulk))
            rows.append(("Ctrl-C during `while :; do cat f; done`, until the prompt", ctrl_c))
            short, long_, persist, roam = args.outages
            resume = args.resume_limit
            cells = bench.outage(tools, short, resume)
            rows.append((f"a {short:.0f} s outage", cells))
            print(f"  {short:.0f} s outage: {cells}", flush=True)
            cells = bench.outage(tools, long_, max(resume, 120.0 if long_ >= 180 else resume))
            label = "a 3-minute outage, default host" if long_ >= 180 else \
                f"a {long_:.0f} s outage, default host (--quick; 3 minutes without)"
            rows.append((label, cells))
            print(f"  {label}: {cells}", flush=True)
            cells = {tool: "–" for tool in tools}
            for tool in SKYPTY:
                if tool in tools:
                    cells[tool] = bench.persistent_outage(tool, persist, args.persist_limit)
            rows.append((f"a {persist:.0f} s outage, `persistent_sessions` on", cells))
            print(f"  persistent: {cells}", flush=True)
            roam_tools = tools + [t + "-persistent" for t in tools if t in SKYPTY]
            cells = bench.roaming(roam_tools, roam)
            for tool in SKYPTY:
                if tool in tools:
                    cells[tool] = f"default host: {cells[tool]}; persistent: {cells.pop(tool + '-persistent')}"
            rows.append(("the client's IP address changes", cells))
            print(f"  roaming: {cells}", flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def short_keys(text):
    """66-hex public keys as their first 8 digits (they differ every run)."""
    return re.sub(r"\b([0-9a-f]{8})[0-9a-f]{58}\b", "\\1…", text)


def CONDITIONS_TITLE(name):
    return CONDITION_NAMES[name]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter outages and waits")
    ap.add_argument("--conditions", default="200ms,loss", help="comma-separated: " + ",".join(CONDITIONS))
    ap.add_argument("--tools", default="ssh,mosh,skypty,skypty-dmsg")
    args = ap.parse_args()
    why = linkemu.available()
    if why:
        raise SystemExit(f"bench_links: {why}")
    tools = [t for t in args.tools.split(",") if t]
    if "mosh" in tools and not HAVE_MOSH:
        print("mosh is not installed (apt-get install mosh): left out", file=sys.stderr)
        tools.remove("mosh")
    args.outages = (10.0, 40.0, 15.0, 20.0) if args.quick else (30.0, 180.0, 60.0, 60.0)
    args.resume_limit = 40.0 if args.quick else 60.0
    args.persist_limit = 40.0 if args.quick else 120.0  # today's client notices a dead link late
    def stop(signum, frame):  # clean up the namespaces and every process in them
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    for name in args.conditions.split(","):
        rows = run_condition(name, tools, args)
        print(f"\n### {CONDITIONS_TITLE(name)}\n")
        print("| what | " + " | ".join(COLUMNS.get(t, t) for t in tools) + " |")
        print("|---|" + "---|" * len(tools))
        for what, cells in rows:
            print(f"| {what} | " + " | ".join(short_keys(cells.get(t, "–")) for t in tools) + " |")
        print(flush=True)
    print(f"(whole run {time.monotonic() - started:.0f} s; prompt {PROMPT!r})")


if __name__ == "__main__":
    main()

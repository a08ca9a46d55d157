import re

from twisted.internet import defer, reactor
from twisted.trial import unittest

from skypty.host.shell import DirectReader, PipeProcess, PtyProcess, ShellEnded, SpawnError
from tests.procutil import open_fds, pid_alive, wait_until, zombie_children


def start(argv, rows=None, cols=None, reader=None):
    reader = reader or DirectReader()
    proc = PtyProcess.spawn(reactor, argv[0], argv[1:], ["TERM=xterm"], rows=rows, cols=cols, sink=reader)
    reader.process = proc
    return proc, reader


@defer.inlineCallbacks
def read_all(reader, limit=65536):
    out = []
    while True:
        try:
            out.append((yield reader.read(limit)))
        except ShellEnded:
            return b"".join(out)


class PtyProcessTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_output_and_exit_status(self):
        proc, reader = start(["sh", "-c", "echo hi; exit 3"])
        out = yield read_all(reader)
        self.assertEqual(out, b"hi\r\n")
        self.assertEqual((yield proc.when_ended()), 3)

    @defer.inlineCallbacks
    def test_interactive_cat_and_resize(self):
        proc, reader = start(["sh"], rows=24, cols=80)
        proc.write(b"stty size\n")
        buf = b""
        while b"24 80" not in buf:
            buf += yield reader.read(4096)
        proc.resize(50, 132)
        proc.write(b"stty size; exit\n")
        buf += yield read_all(reader)
        self.assertIn(b"50 132", buf)

    @defer.inlineCallbacks
    def test_stop_kills_the_whole_process_group(self):
        proc, reader = start(["sh", "-c", "sleep 1000 & echo bg=$!; sleep 1000"])
        buf = b""
        while not re.search(rb"bg=(\d+)\r\n", buf):
            buf += yield reader.read(4096)
        grandchild = int(re.search(rb"bg=(\d+)", buf).group(1))
        self.assertTrue(pid_alive(grandchild))
        proc.stop()
        status = yield proc.when_ended()
        self.assertLess(status, 0)
        yield wait_until(lambda: not pid_alive(grandchild))
        self.assertFalse(pid_alive(proc.pid))

    @defer.inlineCallbacks
    def test_big_output_complete_in_order_with_bounded_queue(self):
        reader = DirectReader(high_water=64 * 1024, low_water=16 * 1024)
        proc, reader = start(["seq", "1", "200000"], reader=reader)
        chunks, peak = [], 0
        while True:
            peak = max(peak, reader.queued)
            try:
                chunks.append((yield reader.read(1000)))  # a slow reader: small reads
            except ShellEnded:
                break
        lines = b"".join(chunks).split(b"\r\n")
        self.assertEqual(lines[:-1], [str(i).encode() for i in range(1, 200001)])
        self.assertLess(peak, 64 * 1024 + 65536)  # at most one chunk over the mark

    def test_missing_command_is_a_clean_error(self):
        self.assertRaises(SpawnError, PtyProcess.spawn, reactor, "no-such-command-xyz", [], [])

    def test_second_concurrent_read_is_refused(self):
        proc, reader = start(["sh", "-c", "read x"])
        first = reader.read(10)
        second = reader.read(10)
        self.failureResultOf(second)
        proc.stop()
        return self.assertFailure(first, ShellEnded)

    @defer.inlineCallbacks
    def test_no_zombies_or_fd_leaks_after_many_shells(self):
        # The first spawn installs the reactor's SIGCHLD waker pipe for good.
        yield read_all(start(["true"])[1])
        before = open_fds()
        for i in range(50):
            proc, reader = start(["sh", "-c", f"echo {i}"])
            out = yield read_all(reader)
            self.assertEqual(out, f"{i}\r\n".encode())
            yield proc.when_ended()
        yield wait_until(lambda: open_fds() <= before)
        self.assertEqual(zombie_children(), [])


class HomeDirectoryTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_shell_starts_in_home_not_the_daemons_directory(self):
        import os

        home = self.mktemp()
        os.makedirs(home)
        reader = DirectReader()
        proc = PtyProcess.spawn(reactor, "sh", ["-c", "pwd"], [f"HOME={home}"], sink=reader)
        reader.process = proc
        out = yield read_all(reader)
        self.assertEqual(out.strip().decode(), os.path.realpath(home))


class PipeProcessTests(unittest.TestCase):
    """pty.StartPiped: no terminal; stdin, stdout and stderr are pipes."""

    def start(self, argv):
        out, err = DirectReader(), DirectReader()
        proc = PipeProcess.spawn(reactor, argv[0], argv[1:], [], sink=out, err_sink=err)
        out.process = err.process = proc
        return proc, out, err

    @defer.inlineCallbacks
    def test_streams_stay_apart_and_closing_stdin_is_eof(self):
        proc, out, err = self.start(["sh", "-c", "test -t 0 || echo no-tty; tr a-z A-Z; echo e >&2; exit 5"])
        proc.write(b"hello\n")
        proc.close_stdin()
        self.assertEqual((yield read_all(out)), b"no-tty\nHELLO\n")
        self.assertEqual((yield read_all(err)), b"e\n")
        self.assertEqual((yield proc.when_ended()), 5)

    @defer.inlineCallbacks
    def test_stop_ends_the_whole_group(self):
        proc, out, err = self.start(["sh", "-c", "sleep 1000 & echo $!; sleep 1000"])
        line = b""
        while not line.endswith(b"\n"):
            line += yield out.read(100)
        grandchild = int(line)
        proc.stop()
        yield proc.when_ended()
        yield wait_until(lambda: not pid_alive(grandchild))


class SpawnedChildTests(unittest.TestCase):
    """What a child gets from skypty.host.spawn: the pty as its controlling
    terminal (job control works), no fd of the host, default signals (glibc's
    own 32 and 33 included), nothing blocked."""

    @defer.inlineCallbacks
    def test_pty_is_the_controlling_terminal_and_nothing_else_is_inherited(self):
        import os

        script = "tty; ps -o pgid=,tpgid= -p $$; exec grep -E '^Sig(Ign|Blk)' /proc/self/status"
        proc, reader = start(["sh", "-c", script])
        out = (yield read_all(reader)).decode()
        self.assertEqual((yield proc.when_ended()), 0)
        lines = out.split("\r\n")
        self.assertTrue(lines[0].startswith("/dev/pts/"), out)
        pgid, tpgid = lines[1].split()
        self.assertEqual(pgid, tpgid)  # the shell's group is the terminal's foreground group
        self.assertIn("SigIgn:\t0000000000000000", out)
        self.assertIn("SigBlk:\t0000000000000000", out)

    @defer.inlineCallbacks
    def test_piped_child_has_its_own_session_and_only_stdio(self):
        import os

        leaked = os.open(os.devnull, os.O_RDONLY)  # inheritable: the child must not get it anyway
        os.set_inheritable(leaked, True)
        self.addCleanup(os.close, leaked)
        out, err = DirectReader(), DirectReader()
        # ls execs in place of the spawned sh: its fds are the child's, plus the directory it reads (3)
        proc = PipeProcess.spawn(reactor, "sh", ["-c", "ps -o sid= -p $$; exec ls /proc/self/fd"], [],
                                 sink=out, err_sink=err)
        out.process = err.process = proc
        text = (yield read_all(out)).decode().split("\n")
        self.assertEqual((yield proc.when_ended()), 0)
        self.assertEqual(int(text[0]), proc.pid)  # a session leader
        self.assertNotEqual(int(text[0]), os.getsid(0))
        self.assertEqual(sorted(text[1:-1]), ["0", "1", "2", "3"])

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from skypty.host.command import CAPTURE_LIMIT, ExecError, run_exec
from tests.procutil import open_fds, pid_alive, wait_until, zombie_children


class ExecTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_streams_and_exit_code(self):
        r = yield run_exec(reactor, "sh", ["-c", "echo out; echo err >&2; exit 7"])
        self.assertEqual((r.stdout, r.stderr, r.exit_code, r.timed_out), (b"out\n", b"err\n", 7, False))

    @defer.inlineCallbacks
    def test_stdin_is_delivered(self):
        r = yield run_exec(reactor, "wc", ["-c"], stdin=b"x" * 1000)
        self.assertEqual(r.stdout.strip(), b"1000")

    def test_oversized_stdin_is_refused_before_spawning(self):
        return self.assertFailure(run_exec(reactor, "true", [], stdin=b"x" * (1024 * 1024 + 1)), ExecError)

    @defer.inlineCallbacks
    def test_timeout_kills_the_process_group(self):
        r = yield run_exec(reactor, "sh", ["-c", "sleep 100 & echo $!; sleep 100"], timeout_ms=300)
        self.assertTrue(r.timed_out)
        grandchild = int(r.stdout.split()[0])
        yield wait_until(lambda: not pid_alive(grandchild))

    @defer.inlineCallbacks
    def test_child_runs_in_its_own_session(self):
        r = yield run_exec(reactor, "sh", ["-c", "ps -o sid= -p $$"])
        self.assertNotEqual(int(r.stdout), os.getsid(0))

    @defer.inlineCallbacks
    def test_output_is_capped_at_16_mib(self):
        r = yield run_exec(reactor, "head", ["-c", str(20 * 1024 * 1024), "/dev/zero"])
        self.assertEqual(len(r.stdout), CAPTURE_LIMIT)
        self.assertTrue(r.stdout_truncated)
        self.assertFalse(r.stderr_truncated)
        self.assertEqual(r.exit_code, 0)

    @defer.inlineCallbacks
    def test_missing_command_exits_127(self):
        r = yield run_exec(reactor, "no-such-command-xyz", [])
        self.assertEqual(r.exit_code, 127)
        self.assertIn(b"no-such-command-xyz", r.stderr)

    @defer.inlineCallbacks
    def test_200_execs_leave_no_zombies_or_fds(self):
        yield run_exec(reactor, "true", [])  # installs the reactor's SIGCHLD waker pipe
        before = open_fds()
        for i in range(200):
            r = yield run_exec(reactor, "true", [])
            self.assertEqual(r.exit_code, 0)
        yield wait_until(lambda: open_fds() <= before)
        self.assertEqual(zombie_children(), [])

    @defer.inlineCallbacks
    def test_runs_in_the_home_directory(self):
        home = self.mktemp()
        os.makedirs(home)
        r = yield run_exec(reactor, "pwd", [], env=[f"HOME={home}"])
        self.assertEqual(r.stdout.strip().decode(), os.path.realpath(home))

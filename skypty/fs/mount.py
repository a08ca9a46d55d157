"""The ``fs mount`` process: connect, mount, serve until unmounted.

The reactor runs in the main thread (signals, child processes); llfuse's
loop runs in a thread of its own.  Unless ``--foreground``, the process
forks first and the parent waits until the child has mounted (or failed),
so ``fs mount`` returns with the file system ready, like sshfs.
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

MOUNT_TYPE = "fuse.skypty"
FUSE_WORKERS = 16


class MountError(Exception):
    pass


# -- /proc/self/mountinfo -----------------------------------------------------------

def _unescape(field):
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounts():
    """-> {mount point: file system type} of this mount namespace."""
    found = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            found[_unescape(fields[4])] = right.split()[0] if right else ""
    return found


def is_skypty_mount(mountpoint):
    return mounts().get(os.path.realpath(mountpoint)) == MOUNT_TYPE


# -- unmounting -----------------------------------------------------------------------

def unmount_command(mountpoint, lazy=False):
    for tool in ("fusermount3", "fusermount"):
        path = shutil.which(tool)
        if path:
            return [path, "-u"] + (["-z"] if lazy else []) + [mountpoint]
    return ["umount"] + (["-l"] if lazy else []) + [mountpoint]


def umount(mountpoint, timeout=10.0):
    """Unmount a skypty mount; returns once it is gone. Raises MountError."""
    real = os.path.realpath(mountpoint)
    kind = mounts().get(real)
    if kind is None:
        raise MountError(f"{mountpoint} is not mounted")
    if kind != MOUNT_TYPE:
        raise MountError(f"{mountpoint} is a {kind} mount, not skypty's (not touching it)")
    r = subprocess.run(unmount_command(real), capture_output=True, text=True)
    if r.returncode != 0:
        why = (r.stderr or r.stdout).strip().splitlines()
        detail = why[-1] if why else f"exit {r.returncode}"
        if "busy" in detail.lower():
            detail += " (a process still uses it: leave the directory, close its files)"
        raise MountError(f"cannot unmount {mountpoint}: {detail}")
    deadline = time.monotonic() + timeout
    while real in mounts():
        if time.monotonic() > deadline:
            raise MountError(f"{mountpoint} is still mounted after {timeout:g}s")
        time.sleep(0.05)


# -- mounting -----------------------------------------------------------------------

def check_mountpoint(mountpoint):
    if not os.path.isdir(mountpoint):
        raise MountError(f"mount point {mountpoint} is not a directory")
    if os.path.realpath(mountpoint) in mounts():
        raise MountError(f"{mountpoint} is already a mount point (`skypty-client fs umount {mountpoint}` first?)")
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: this system cannot mount FUSE file systems "
                         "(load the fuse module, or install fuse3)")


class Mount:
    """Everything one mount needs; ``run()`` blocks until it is unmounted."""

    def __init__(self, connect, mountpoint, name, remote_root=b"/", read_only=False,
                 attr_ttl=20.0, entry_ttl=20.0, dir_ttl=20.0, timeout=15.0):
        self.connect, self.mountpoint, self.name = connect, os.path.realpath(mountpoint), name
        self.remote_root = remote_root
        self.read_only = read_only
        self.attr_ttl, self.entry_ttl, self.dir_ttl, self.timeout = attr_ttl, entry_ttl, dir_ttl, timeout
        self.exit_code = 0

    def fuse_options(self):
        safe_name = self.name.replace(",", "_")
        # nonempty: like sshfs on fuse3, a directory with files in it may be
        # mounted over (they are hidden until the unmount, not touched).
        options = {f"fsname=skypty#{safe_name}", "subtype=skypty", "big_writes", "max_read=131072",
                   "nonempty"}
        if self.read_only:
            options.add("ro")
        return options

    def run(self, on_ready, on_failure):
        """Connect, mount, serve. *on_ready()* once mounted; *on_failure(msg)*
        if it never got that far. Returns the process exit code."""
        from twisted.internet import reactor
        from twisted.logger import Logger

        from skypty.fs.link import RemoteFS, SFTPLink

        log = Logger(namespace="skypty.fs")
        try:
            connector = self.connect(reactor)
        except Exception as e:
            on_failure(str(e))
            return 1
        link = SFTPLink(reactor, connector, timeout=self.timeout)
        fs = RemoteFS(link)
        state = {"thread": None, "failed": None}

        def fail(message):
            state["failed"] = message
            on_failure(message)
            self.exit_code = 1
            if reactor.running:
                reactor.stop()

        def start():
            d = link.session()
            d.addCallback(lambda _: fs.lstat(self.remote_root))
            d.addCallbacks(connected, lambda f: fail(start_failure_message(f, self.remote_root)))

        def connected(attrs):
            import stat

            if not stat.S_ISDIR(attrs.get("permissions", 0)):
                return fail(f"remote {self.remote_root.decode(errors='replace')} is not a directory")
            thread = threading.Thread(target=fuse_thread, name="fuse", daemon=True)
            state["thread"] = thread
            thread.start()

        def fuse_thread():
            import llfuse

            from skypty.fs.operations import SFTPOperations

            ops = SFTPOperations(reactor, fs, self.remote_root, self.read_only, self.attr_ttl, self.entry_ttl,
                                 self.dir_ttl)
            try:
                llfuse.init(ops, self.mountpoint, sorted(self.fuse_options()))
            except Exception as e:
                reactor.callFromThread(fail, f"cannot mount on {self.mountpoint}: {e}")
                return
            reactor.callFromThread(on_ready)
            log.info("mounted {name} on {mountpoint}", name=self.name, mountpoint=self.mountpoint)
            try:
                llfuse.main(workers=FUSE_WORKERS, handle_signals=False)
            finally:
                llfuse.close(unmount=False)  # the kernel already let go (umount)
                log.info("unmounted {mountpoint}", mountpoint=self.mountpoint)
                reactor.callFromThread(link.close)
                reactor.callFromThread(reactor.stop)

        def before_shutdown():
            # SIGTERM/SIGINT: unmount (lazily: open files must not keep us
            # alive), which ends llfuse's loop.
            thread = state["thread"]
            if thread is not None and thread.is_alive():
                subprocess.run(unmount_command(self.mountpoint, lazy=True), capture_output=True)
                thread.join(10)

        # llfuse wakes its worker threads with SIGUSR1 when the loop ends;
        # without a handler that signal would kill the whole process.
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)
        reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
        reactor.callWhenRunning(start)
        reactor.run()
        return self.exit_code


def start_failure_message(failure, remote_root):
    """Why the mount never started, in one line: the host's own refusal as
    it is (it was reached), anything else as not reaching it."""
    from skypty.fs.errors import HostRefused

    if _is_missing(failure):
        return f"remote directory {remote_root.decode(errors='replace')} does not exist"
    if failure.check(HostRefused):
        return failure.getErrorMessage()
    return f"cannot reach the host: {failure.getErrorMessage()}"


def _is_missing(failure):
    from twisted.conch.ssh import filetransfer as fx

    return failure.check(fx.SFTPError) and failure.value.code == fx.FX_NO_SUCH_FILE


def run_mount(mount, foreground, log_file=None, printable=str):
    """Run *mount*, in the background unless *foreground*; -> exit code.
    *printable* makes a failure's text (the host's words can be in it) safe
    for the terminal: the client hands in skypty.client.textsafe.safe."""
    from twisted.logger import globalLogBeginner, textFileLogObserver

    if foreground:
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
        return mount.run(on_ready=lambda: None,
                         on_failure=lambda msg: sys.stderr.write(f"skypty-client: {printable(msg)}\n"))

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:  # the parent: wait for the child's word
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            word = pipe.read().decode("utf-8", "replace")
        if word.startswith("ok"):
            return 0
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        sys.stderr.write(f"skypty-client: {printable(word.strip()) or 'the mount process died'}\n")
        return 1

    os.close(read_end)
    os.setsid()
    out = open(log_file, "a") if log_file else open(os.devnull, "w")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(out)], redirectStandardIO=False)

    reported = []

    def report(word):
        if reported:  # once: the pipe's fd number may be reused afterwards
            return
        reported.append(word)
        try:
            os.write(write_end, word.encode("utf-8"))
        except OSError:
            pass
        os.close(write_end)

    def ready():
        report("ok\n")
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)

    code = 1
    try:
        code = mount.run(on_ready=ready, on_failure=report)
    finally:
        report("")
        os._exit(code)

"""skypty-client: the command line, mirroring Skywire's ``cli pty``.

Start-up speed matters (a one-shot ``exec``/``shell`` should beat ssh), so
this module imports nothing heavy: each verb's implementation is imported
only when that verb runs.
"""

import os
import sys

from skypty import __version__

EXIT_CODES = """exit codes:
  0    success (exec/shell/start: the remote command's own exit status is mirrored)
  1    failure: the host could not be reached, refused us, or answered an error
  2    usage error (bad option, missing `--` before the command)
  124  the remote command timed out (--timeout)
  130  interrupted with Ctrl-C
  255  disconnected with the escape sequence ~.
"""

IDENTITY_HELP = """identity (whose key this client speaks as), in this order:
  --sk HEX            this secret key
  --no-visor-key      a fresh random key (its pk is printed on stderr)
  -p/--pkg            the key in /opt/skywire/skywire.json
  -i/--input CONFIG   the key in CONFIG, else $SKYPTY_CONFIG, else ./skywire-config.json
"""


def _identity_options(parser, pkg_flags=("-p", "--pkg")):
    g = parser.add_argument_group("identity")
    g.add_argument("-i", "--input", metavar="CONFIG", help="config file to take the key (and control socket) from")
    g.add_argument(*pkg_flags, action="store_true", help="use /opt/skywire/skywire.json")
    g.add_argument("--sk", metavar="HEX", help="use this secret key")
    g.add_argument("--no-visor-key", action="store_true", help="use a fresh random key")


FLEET_HELP = """
many hosts (several HOSTs, @GROUP or --json): each runs concurrently; output
lines come prefixed with the host's name (--group: one block per host), then
a summary on stderr; exit 0 only when every host exited 0, else 1.
"""

CP_HELP = """a remote side is NAME:PATH, PK@HOST[:PORT]:PATH (direct Noise TCP) or PK:PATH
(through the local host over dmsg); PATH is on the host's SFTP root. A file is
written under a temporary name in its directory and renamed when complete.
"""

HOSTS_HELP = """names live in $XDG_CONFIG_HOME/skypty/hosts.toml (default
~/.config/skypty/hosts.toml); see docs/guide.md, "Host names".
"""


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        import argparse

        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _cli_options(parser):
    g = parser.add_argument_group("local host")
    g.add_argument("--cliaddr", metavar="ADDR", help="control socket of the local host (default: from the config, else /tmp/pty.sock)")
    g.add_argument("--clinet", metavar="NET", choices=("unix", "tcp"), help="network of --cliaddr (unix or tcp)")


def _timeout_option(parser):
    parser.add_argument("--timeout", metavar="DURATION", default="30s",
                        help="remote command timeout: 30s, 5m, or seconds (default 30s, host caps at 5m)")


def _escape_char(text):
    from skypty.client.escape import parse_escape_char

    try:
        return parse_escape_char(text)
    except ValueError as e:
        import argparse

        raise argparse.ArgumentTypeError(str(e)) from None


def _terminal_options(parser, tty_help):
    parser.add_argument("-t", "--tty", action="store_true", help=tty_help)
    parser.add_argument("-T", "--no-tty", action="store_true",
                        help="never ask for a pty: stdin, stdout and stderr are pipes (like ssh -T)")
    parser.add_argument("-e", dest="escape", metavar="CHAR", type=_escape_char, default=b"~",
                        help="escape character at the start of a line (default ~: ~. disconnects, "
                             "~? lists the escapes); ^X for a control key; none turns it off")
    parser.add_argument("--predict", choices=("auto", "always", "never"), default=None,
                        help="show typed characters before the host echoes them (as mosh does): auto "
                             "(default) does above ~30 ms round trip; also `predict` in hosts.toml "
                             "and $SKYPTY_PREDICT")


def _command_arg(parser, required):
    # Everything after "--" is the command (main() splits it off before parsing,
    # so options may come before or after the target).
    parser.add_argument("command", nargs="+" if required else "*", metavar="-- CMD [ARG...]",
                        help="the command to run, after --")


def _columns():
    """The terminal width as shutil.get_terminal_size finds it."""
    try:
        columns = int(os.environ["COLUMNS"])
        if columns > 0:
            return columns
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


def _formatter_class(argparse):
    class Formatter(argparse.RawDescriptionHelpFormatter):
        """argparse's, minus its import of shutil (and with it bz2, lzma and
        fnmatch) just to learn the terminal width: every add_argument makes one."""

        def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
            super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)

    return Formatter


class _Skipped:
    """Takes the place of the parser of a verb that is not being run."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: self


def build_parser(only=None):
    """The whole command line, or (*only*) just that verb's part of it:
    building every verb's parser was ~8 ms of each one-shot exec."""
    import argparse  # not at import: a plain `exec PK -- CMD` never needs it (skypty.client.fastargs)

    _Formatter = _formatter_class(argparse)
    parser = argparse.ArgumentParser(
        prog="skypty-client",
        description="Client for skypty and Skywire pty hosts: shells, commands, files and the "
                    "web terminal, authorised by secp256k1 public key.",
        epilog=EXIT_CODES, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"skypty-client {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    def verb(name, help_, **kw):
        if only is not None and name != only:
            return _Skipped()
        p = sub.add_parser(name, help=help_, description=help_, epilog=kw.pop("epilog", EXIT_CODES),
                           formatter_class=_Formatter, **kw)
        return p

    p = verb("exec", "Run one command on a remote host and mirror its exit code; or on many "
                     "hosts at once (a fleet), with a summary.",
             epilog=IDENTITY_HELP + "\n" + EXIT_CODES + FLEET_HELP)
    p.add_argument("targets", metavar="HOST", nargs="+",
                   help="PK (66 hex: through the local host), PK@HOST[:PORT] (direct Noise TCP), "
                        "a NAME from `skypty-client hosts`, or @GROUP; several run concurrently")
    p.add_argument("--via", metavar="tcp://PK@HOST:PORT",
                   help="reach the host directly over Noise TCP instead of through the local host")
    p.add_argument("--scheme", choices=("dmsg", "skynet"), default=None,
                   help="transport when going through the local host (default dmsg)")
    p.add_argument("--port", type=int, default=22, help="the remote host's dmsg pty port (default 22)")
    _timeout_option(p)
    p.add_argument("--stdin", action="store_true", help="send this process's stdin (up to 1 MiB) to the command")
    fleet = p.add_argument_group("many hosts (and --json)")
    fleet.add_argument("--json", action="store_true",
                       help="one JSON object per host per line (docs/exec-result.schema.json)")
    fleet.add_argument("--parallel", metavar="N", type=_positive_int, default=16,
                       help="hosts at once (default 16)")
    fleet.add_argument("--group", action="store_true",
                       help="print each host's output as one block instead of prefixed lines")
    fleet.add_argument("--connect-timeout", metavar="DURATION",
                       help="a host not connected and accepting within this long is unreachable (default: "
                            "10s direct, up to 60s for the local host's answer, which says why)")
    _identity_options(p)
    _cli_options(p)
    _command_arg(p, required=False)

    p = verb("start", "Open an interactive shell: local with no PK, else on a remote host.",
             epilog=IDENTITY_HELP + "\n" + EXIT_CODES)
    p.add_argument("pk", metavar="PK", nargs="?",
                   help="remote host's public key or NAME (omit for a local shell)")
    p.add_argument("--attach", metavar="ID", help="reattach the persistent session ID")
    p.add_argument("--scheme", choices=("dmsg", "skynet"), default=None)
    p.add_argument("--port", type=int, default=22, help="the remote host's dmsg pty port (default 22)")
    _terminal_options(p, "ask for a pty even when stdin is not a terminal (by default: only when it is)")
    _identity_options(p)
    _cli_options(p)
    _command_arg(p, required=False)

    p = verb("shell", "Shell over the direct Noise TCP port: interactive, or one-shot with -- CMD.",
             epilog=IDENTITY_HELP + "\n" + EXIT_CODES)
    p.add_argument("target", metavar="PK@HOST[:PORT]",
                   help="host key and address (default port 2022), or a NAME with an addr")
    p.add_argument("--port", type=int, default=None, help="TCP port when TARGET has none (default 2022)")
    p.add_argument("--attach", metavar="ID", help="reattach the persistent session ID")
    _terminal_options(p, "run on a pty even with -- CMD or when stdin is not a terminal (like ssh -t); "
                         "without -t/-T, CMD is a captured one-shot exec (-T streams it, stdin included)")
    _timeout_option(p)
    _identity_options(p)
    _command_arg(p, required=False)

    p = verb("list", "Show the peers this host can see over dmsg (or its sessions).")
    p.add_argument("--sessions", action="store_true", help="list this host's persistent sessions instead")
    _identity_options(p)
    _cli_options(p)

    for name, help_ in (("whitelist", "Show the host's effective whitelist."),
                        ("whitelist-add", "Let public keys in (takes effect at once, saved to the config)."),
                        ("whitelist-remove", "Shut public keys out again (saved to the config).")):
        p = verb(name, help_)
        if name != "whitelist":
            p.add_argument("pks", metavar="PK", nargs="+", help="keys, host NAMEs or @GROUPs")
        _identity_options(p)
        _cli_options(p)

    p = verb("fs", "Mount a remote host's filesystem over SFTP (FUSE), or unmount it.")
    fs = p.add_subparsers(dest="fs_verb", metavar="mount|umount|pipe")
    m = fs.add_parser(
        "mount", help="mount a host's files at MOUNTPOINT",
        usage="skypty-client fs mount [options] PK[@HOST[:PORT]] MOUNTPOINT\n"
              "       skypty-client fs mount [options] --sftp-command CMD NAME MOUNTPOINT",
        description="Mount a whitelisted host's files (its dmsgpty/sftp service) with FUSE. "
                    "PK@HOST[:PORT] connects straight to the host's Noise TCP port (its ssh_listen, "
                    "default port 2022); a bare PK goes through the local host's control socket "
                    "and the dmsg overlay. Returns once the mount is ready and keeps serving it in "
                    "the background (--foreground to stay). Unmount with `skypty-client fs umount "
                    "MOUNTPOINT`. A dropped link makes file operations fail with EIO (not hang); "
                    "the mount reconnects by itself on the next operation.",
    )
    m.add_argument("target", metavar="PK[@HOST[:PORT]]",
                   help="the host, or its NAME (with --sftp-command: just a NAME shown by mount and df)")
    m.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing directory")
    m.add_argument("--ro", action="store_true", help="mount read-only")
    m.add_argument("--remote-root", default="/", metavar="DIR",
                   help="directory on the host to mount (default /, i.e. the host's sftp root)")
    m.add_argument("--attr-ttl", default="20s", metavar="DURATION",
                   help="how long file attributes are cached, here and by the kernel (default 20s, as "
                        "sshfs; 0 = ask every time); changes made through this mount show at once")
    m.add_argument("--entry-ttl", default="20s", metavar="DURATION",
                   help="how long the kernel may cache name lookups (default 20s)")
    m.add_argument("--dir-ttl", default="20s", metavar="DURATION",
                   help="how long directory listings are cached (default 20s; 0 = list every time)")
    m.add_argument("--timeout", default="15s", metavar="DURATION",
                   help="a request unanswered this long fails with EIO and drops the link (default 15s)")
    m.add_argument("--port", type=int, default=22, metavar="N",
                   help="the host's dmsg port, for a bare PK (default 22)")
    m.add_argument("--sftp-command", metavar="CMD",
                   help="instead of a host, run CMD and speak SFTP on its stdin/stdout "
                        "(e.g. /usr/lib/openssh/sftp-server, or 'ssh HOST -s sftp')")
    m.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground, log to stderr")
    m.add_argument("--log", metavar="FILE", help="in the background, append the log to FILE")
    _identity_options(m)
    _cli_options(m)
    u = fs.add_parser("umount", help="unmount MOUNTPOINT",
                      description="Unmount a skypty mount; its background process exits. Fails "
                                  "(exit 1) while a process still uses the mount.")
    u.add_argument("mountpoint")
    pp = fs.add_parser("pipe", help="relay the host's SFTP service on stdin/stdout "
                                    "(for `sftp -D` and other SFTP clients)")
    pp.add_argument("target", metavar="PK@HOST[:PORT]", help="or a NAME with an addr")
    _identity_options(pp)

    p = verb("cp", "Copy files to or from a host over SFTP (like scp): SRC... DST, one side remote.",
             epilog=CP_HELP + "\n" + IDENTITY_HELP + "\n" + EXIT_CODES)
    p.add_argument("paths", metavar="SRC... DST", nargs="+",
                   help="local paths, or NAME:PATH / PK@HOST[:PORT]:PATH / PK:PATH")
    p.add_argument("-r", "--recursive", action="store_true", help="copy directories and what is in them")
    p.add_argument("-p", "--preserve", action="store_true", help="keep modes and modification times")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--port", type=int, default=22, metavar="N", help="the host's dmsg port, for PK:PATH (default 22)")
    p.add_argument("--timeout", default="30s", metavar="DURATION",
                   help="a request unanswered this long fails the copy (default 30s)")
    # limits on what a host's listing can make -r do (the values are skypty.client.cp's)
    p.add_argument("--max-depth", type=_positive_int, default=64, metavar="N",
                   help="with -r: directories nested more than N levels below a source are not copied (default 64)")
    p.add_argument("--max-entries", type=_positive_int, default=100_000, metavar="N",
                   help="with -r: a directory with more than N entries is copied only up to N (default 100000)")
    _identity_options(p, pkg_flags=("--pkg",))  # -p is --preserve, as for scp
    _cli_options(p)

    p = verb("hosts", "Name hosts: list, add or remove names (and groups) for keys.",
             epilog=HOSTS_HELP)
    hs = p.add_subparsers(dest="hosts_verb", metavar="list|add|remove")
    hl = hs.add_parser("list", help="list the names (the default)")
    hl.add_argument("--names", action="store_true", help="only the names and @groups, one a line")
    ha = hs.add_parser("add", help="name a host", description="Name a host: NAME then works wherever "
                                                              "a PK or PK@HOST[:PORT] does.")
    ha.add_argument("name", metavar="NAME")
    ha.add_argument("key", metavar="PK[@HOST[:PORT]]")
    ha.add_argument("--addr", metavar="HOST:PORT", help="its Noise TCP port (then reached directly)")
    ha.add_argument("--transport", choices=("tcp", "dmsg", "skynet"),
                    help="how to reach it (default: tcp with --addr, else through the local host)")
    ha.add_argument("--group", metavar="G", action="append", help="put it in group G (repeatable)")
    ha.add_argument("--predict", choices=("auto", "always", "never"),
                    help="local echo prediction for shells on it (default auto)")
    ha.add_argument("--force", action="store_true", help="replace an existing NAME")
    hr = hs.add_parser("remove", help="forget names")
    hr.add_argument("names", metavar="NAME", nargs="+")

    p = verb("url", "Print the web terminal URL (with this host's access token).")
    p.add_argument("--visor", metavar="PK", help="a remote host to open through this one")
    _identity_options(p)
    _cli_options(p)
    p = verb("ui", "Open the web terminal in a browser.")
    p.add_argument("--visor", metavar="PK", help="a remote host to open through this one")
    _identity_options(p)
    _cli_options(p)

    p = verb("config", "Write a host's config, or print a config's public key.")
    cs = p.add_subparsers(dest="config_verb", metavar="gen|pk")
    g = cs.add_parser("gen", help="write a fresh config with new keys",
                      description="Write a host config with new keys (mode 0600). By default the host "
                                  "runs its own dmsg network on loopback (--embedded); --discovery joins "
                                  "another host's, --network a public Skywire deployment.")
    g.add_argument("-o", "--output", default="skywire-config.json", help="file to write (default ./skywire-config.json)")
    g.add_argument("--force", action="store_true", help="overwrite an existing file")
    g.add_argument("--ssh-listen", default="127.0.0.1:2022", metavar="ADDR",
                   help='Noise TCP port (default 127.0.0.1:2022, this machine only); ":2022" = every '
                        'interface; "" = off')
    g.add_argument("--web-listen", default="127.0.0.1:8080", metavar="ADDR",
                   help='the web terminal (default 127.0.0.1:8080); "" = off')
    g.add_argument("--cli-address", default="/tmp/pty.sock", metavar="PATH",
                   help="the control socket (default /tmp/pty.sock)")
    g.add_argument("--dmsg-port", type=int, default=22, metavar="N", help="dmsg port of the pty service (default 22)")
    g.add_argument("--whitelist", action="append", default=[], metavar="PK",
                   help="let this public key in (repeatable)")
    g.add_argument("--persistent-sessions", action="store_true",
                   help="a dropped link detaches the shell instead of ending it")
    g.add_argument("--manhole", default="", metavar="unix:PATH",
                   help="serve the debugging manhole on this unix socket (mode 0600); "
                        "`skypty-client manhole -i CONFIG` then finds it (default: none)")
    net = g.add_argument_group("dmsg network (one of)").add_mutually_exclusive_group()
    net.add_argument("--embedded", action="store_true",
                     help="run a local discovery and dmsg server inside the host (the default)")
    net.add_argument("--discovery", metavar="URL",
                     help="join this discovery instead, e.g. another host's embedded one: http://HOST:9090")
    net.add_argument("--network", choices=("prod", "test"),
                     help="join a public Skywire deployment: prod (the live network) or test (the developers')")
    emb = g.add_argument_group("embedded network")
    emb.add_argument("--embedded-discovery", metavar="ADDR",
                     help="where the discovery listens (default 127.0.0.1:9090; 0.0.0.0:9090 for other machines)")
    emb.add_argument("--embedded-server", metavar="ADDR",
                     help="where the dmsg server listens (default 127.0.0.1:8081)")
    emb.add_argument("--server-address", metavar="HOST:PORT",
                     help="the dmsg server's address as other machines reach it (default: where it listens)")
    k = cs.add_parser("pk", help="print a config's public key",
                      description="Print the public key of a config, e.g. for another host's --whitelist.")
    k.add_argument("-i", "--input", metavar="CONFIG", help="the config (default $SKYPTY_CONFIG, else ./skywire-config.json)")

    p = verb("manhole", "Open a running host's debugging manhole (a Python prompt inside the host).")
    p.add_argument("path", metavar="PATH", nargs="?",
                   help="the manhole's unix socket (or unix:PATH); default: the config's pty.manhole")
    p.add_argument("-i", "--input", metavar="CONFIG", help="the config naming pty.manhole (default ./skywire-config.json)")

    p = verb("completion", "Print a shell completion script.")
    p.add_argument("shell", choices=("bash", "zsh"))
    return parser


# verb -> (module, function); imported only when used.
VERBS = {
    "exec": ("skypty.client.commands", "cmd_exec"),
    "start": ("skypty.client.commands", "cmd_start"),
    "shell": ("skypty.client.commands", "cmd_shell"),
    "list": ("skypty.client.commands", "cmd_list"),
    "whitelist": ("skypty.client.commands", "cmd_whitelist"),
    "whitelist-add": ("skypty.client.commands", "cmd_whitelist_add"),
    "whitelist-remove": ("skypty.client.commands", "cmd_whitelist_remove"),
    "fs": ("skypty.client.fscmd", "cmd_fs"),
    "url": ("skypty.client.commands", "cmd_url"),
    "ui": ("skypty.client.commands", "cmd_ui"),
    "config": ("skypty.client.configgen", "cmd_config"),
    "manhole": ("skypty.client.manhole", "cmd_manhole"),
    "completion": ("skypty.client.completion", "cmd_completion"),
    "cp": ("skypty.client.cp", "cmd_cp"),
    "hosts": ("skypty.client.hosts", "cmd_hosts"),
}


EXIT_USAGE = 2


def _command_needs_dashes(argv, args, unknown):
    """`exec PK uname -a`: the words of a remote command come after --, so
    that our options and the command's never mix.  Show the fixed line."""
    stray = list(args.command or []) + list(unknown)
    ours, words = [], []
    for word in argv:
        if word in stray:
            stray.remove(word)
            words.append(word)
        else:
            ours.append(word)
    sys.stderr.write("skypty-client: put the remote command after --: "
                     f"skypty-client {' '.join(ours)} -- {' '.join(words)}\n")
    return EXIT_USAGE


def main(argv=None):
    if argv is None:  # the program itself (console script or -m), not a caller in-process
        return _exit_now(_main(sys.argv[1:]))
    return _main(argv)


def _exit_now(code):
    """Flush and leave without the interpreter's teardown (~10 ms of freeing
    modules one by one after a one-shot exec), when nothing else is running:
    no other thread, no Twisted (cp, fs mount) with cleanup of its own."""
    if "twisted.internet.reactor" in sys.modules:
        return code
    if "threading" in sys.modules:
        import threading

        if threading.active_count() > 1:
            return code
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return code  # let the normal exit report it
    os._exit(code if isinstance(code, int) else 1)


def _main(argv):
    argv = list(argv)
    first = argv[0] if argv else ""
    command = None
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    if first == "exec" and command is not None:
        from skypty.client.fastargs import parse_exec

        args = parse_exec(argv[1:], command)
        if args is not None:  # the plain one-shot form, without argparse
            return _run_verb(args, None)
    # Just the verb being run (completion describes them all).
    parser = build_parser(only=first if first in VERBS and first != "completion" else None)
    args, unknown = parser.parse_known_args(argv)
    if not args.verb:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.verb == "hosts" and args.hosts_verb is None and unknown:
        # `hosts --names`: list is the default sub-verb, so its options work without it
        at = argv.index("hosts") + 1
        args, unknown = parser.parse_known_args(argv[:at] + ["list"] + argv[at:])
    if args.verb == "exec" and command is None and (unknown or len(args.targets) > 1):
        # `exec web1 uname -a`: the words after the hosts are a command without --.
        from skypty.client.hosts import looks_like_target

        n = 1
        while n < len(args.targets) and looks_like_target(args.targets[n]):
            n += 1
        args.targets, args.command = args.targets[:n], args.targets[n:]
    takes_command = hasattr(args, "command")
    if command is not None and any(word.startswith("-") for word in unknown):
        # The command is already after --: what is left before it are options we lack.
        options = " ".join(w for w in unknown if w.startswith("-"))
        sys.stderr.write(f"skypty-client {args.verb}: unrecognized option {options} "
                         f"(see skypty-client {args.verb} --help)\n")
        return EXIT_USAGE
    if takes_command and (unknown or args.command):
        return _command_needs_dashes(argv, args, unknown)
    if unknown:  # the verb's own --help, not the top-level usage
        sys.stderr.write(f"skypty-client {args.verb}: unrecognized arguments: {' '.join(unknown)} "
                         f"(see skypty-client {args.verb} --help)\n")
        return EXIT_USAGE
    if command is not None and takes_command:
        args.command = command
    return _run_verb(args, parser)


def _bad_secret_key(args):
    """A malformed --sk is a usage error (exit 2), found before anything connects."""
    text = getattr(args, "sk", None)
    if not text:
        return None
    from skypty.keys import InvalidKey, SecretKey

    try:
        SecretKey.from_hex(text)
    except InvalidKey as e:
        return f"--sk: {e}"
    return None


def _run_verb(args, parser):
    module, func = VERBS[args.verb]
    problem = _bad_secret_key(args)
    if problem:
        sys.stderr.write(f"skypty-client: {problem}\n")
        return EXIT_USAGE
    try:
        # __import__, not importlib.import_module: the importlib package (and the
        # warnings module it loads) is ~1 ms of start-up this does not need.
        return getattr(__import__(module, fromlist=[func]), func)(args, parser) or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""How the words after ``--`` become a command on the host (pure).

Several words are an argv, run as given (no shell in between, so nothing
needs quoting twice).  A single word with shell syntax in it, as people type
it for ssh (``'echo $HOME | tr a-z A-Z'``), runs through the user's shell on
the host: ``$SHELL -c`` when that shell exists there, else ``sh -c``.
"""

# The characters of a word any shell would take literally: run it directly.
# (A set, not a regex: compiling one was part of every exec's start-up.)
_PLAIN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./@%+,:-")

# $1 is the string; the host's $SHELL decides, as sshd's login shell does.
_VIA_USER_SHELL = 's=${SHELL:-/bin/sh}; [ -x "$s" ] || s=/bin/sh; exec "$s" -c "$1"'


def needs_shell(command):
    return len(command) == 1 and not (command[0] and _PLAIN_CHARS.issuperset(command[0]))


def remote_argv(command):
    """The argv to ask the host for (``name`` is argv[0])."""
    command = list(command)
    if needs_shell(command):
        return ["sh", "-c", _VIA_USER_SHELL, "sh", command[0]]
    return command

"""The common one-shot ``exec``, parsed without argparse.

``skypty-client exec PK [options] -- CMD...`` is the start-up that people
wait on, and argparse (with the gettext and locale it pulls in) plus
building its parser were ~5 ms of it.  This parser knows the exec verb's
options in their plain spellings only; anything else (help, an unknown or
abbreviated option, an attached short value, a value that looks like an
option, a bad choice or number) returns None and argparse decides, errors
and all.  tests/test_hotpath.py checks that the two agree, and that every
option the exec parser has is known here.
"""

from types import SimpleNamespace

# dest -> default, for every option of `exec` (skypty.client.main.build_parser)
DEFAULTS = {
    "via": None, "scheme": None, "port": 22, "timeout": "30s", "stdin": False, "json": False,
    "parallel": 16, "group": False, "connect_timeout": None,
    "input": None, "pkg": False, "sk": None, "no_visor_key": False,
    "cliaddr": None, "clinet": None,
}
FLAGS = {"--stdin": "stdin", "--json": "json", "--group": "group", "-p": "pkg", "--pkg": "pkg",
         "--no-visor-key": "no_visor_key"}
VALUES = {"--via": "via", "--scheme": "scheme", "--port": "port", "--timeout": "timeout",
          "--parallel": "parallel", "--connect-timeout": "connect_timeout", "-i": "input", "--input": "input",
          "--sk": "sk", "--cliaddr": "cliaddr", "--clinet": "clinet"}
CHOICES = {"scheme": ("dmsg", "skynet"), "clinet": ("unix", "tcp")}


def _converted(dest, value):
    """*value* as argparse would store it, or None to let argparse say what is wrong."""
    if dest in CHOICES:
        return value if value in CHOICES[dest] else None
    if dest in ("port", "parallel"):
        try:
            number = int(value)
        except ValueError:
            return None
        return number if dest == "port" or number >= 1 else None
    return value


def parse_exec(words, command):
    """*words*: the arguments after ``exec`` and before ``--``; *command*: the
    words after ``--``.  -> the Namespace argparse would give, or None."""
    values = dict(DEFAULTS)
    targets = []
    in_targets = False  # the HOSTs are one run of words; a second run is a stray command to argparse
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("-") or word == "-":
            if targets and not in_targets:
                return None
            targets.append(word)
            in_targets = True
            i += 1
            continue
        in_targets = False
        if word in FLAGS:
            values[FLAGS[word]] = True
        else:
            option, eq, value = word.partition("=")
            if option not in VALUES or (eq and not option.startswith("--")):
                return None
            if not eq:
                i += 1
                if i == len(words):
                    return None
                value = words[i]
            if value.startswith("-"):
                return None
            converted = _converted(VALUES[option], value)
            if converted is None:
                return None
            values[VALUES[option]] = converted
        i += 1
    if not targets:
        return None
    return SimpleNamespace(verb="exec", targets=targets, command=list(command), **values)

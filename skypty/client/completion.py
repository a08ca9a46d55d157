"""Shell completion scripts for skypty-client (verbs and their options)."""


def _verbs_and_options(parser):
    import argparse

    result = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                opts = [o for a in sub._actions for o in a.option_strings]
                nested, nested_opts = [], []
                for a in sub._actions:
                    if isinstance(a, argparse._SubParsersAction):
                        for n, p in a.choices.items():  # e.g. config gen: its options too
                            nested.append(n)
                            nested_opts += [o for b in p._actions for o in b.option_strings]
                result[name] = list(dict.fromkeys(nested + opts + nested_opts))
    return result


def bash_script(parser):
    table = _verbs_and_options(parser)
    cases = "\n".join(f'    {verb}) opts="{" ".join(opts)}" ;;' for verb, opts in table.items())
    return f"""# bash completion for skypty-client; source it or put it in /etc/bash_completion.d/
_skypty_client() {{
  local cur verb opts
  cur="${{COMP_WORDS[COMP_CWORD]}}"
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "{' '.join(table)} --help --version" -- "$cur"))
    return
  fi
  verb="${{COMP_WORDS[1]}}"
  case "$verb" in
{cases}
    *) opts="" ;;
  esac
  COMPREPLY=($(compgen -W "$opts --help" -- "$cur"))
}}
complete -o default -F _skypty_client skypty-client
"""


def zsh_script(parser):
    return "#compdef skypty-client\nautoload -U bashcompinit && bashcompinit\n" + bash_script(parser)


def cmd_completion(args, parser):
    import sys

    sys.stdout.write(bash_script(parser) if args.shell == "bash" else zsh_script(parser))
    return 0

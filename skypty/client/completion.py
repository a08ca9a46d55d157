"""Shell completion scripts for skypty-client: verbs, their options, and
host names (asked of ``skypty-client hosts list --names`` at completion
time, so a name added a moment ago completes at once)."""


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
  if [[ "$cur" != -* ]]; then
    # Host names and @groups from hosts.toml (skypty-client hosts list --names).
    case "$verb" in
      exec|whitelist-add|whitelist-remove) opts="$opts $(_skypty_client_names)" ;;
      start|shell|fs|url|ui) opts="$opts $(_skypty_client_names | grep -v '^@')" ;;
      hosts) [ "${{COMP_WORDS[2]}}" = remove ] && opts="$opts $(_skypty_client_names | grep -v '^@')" ;;
      cp)
        local names
        names=$(_skypty_client_names | grep -v '^@' | sed 's/$/:/')
        COMPREPLY=($(compgen -W "$names" -- "$cur"))
        [ ${{#COMPREPLY[@]}} -gt 0 ] && compopt -o nospace 2>/dev/null
        return ;;
    esac
  fi
  COMPREPLY=($(compgen -W "$opts --help" -- "$cur"))
}}
_skypty_client_names() {{
  skypty-client hosts list --names 2>/dev/null
}}
complete -o default -F _skypty_client skypty-client
"""


def zsh_script(parser):
    return "#compdef skypty-client\nautoload -U bashcompinit && bashcompinit\n" + bash_script(parser)


def cmd_completion(args, parser):
    import sys

    sys.stdout.write(bash_script(parser) if args.shell == "bash" else zsh_script(parser))
    return 0

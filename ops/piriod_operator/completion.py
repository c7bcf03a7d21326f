"""Shell completion for bash and zsh, written from the parser itself (no dependency): the
commands, their options, and the choices of options and arguments that have them. Anything
else (a FILE, a NAME) falls back to the shell's own file completion.

    eval "$(piriod-adapter completion bash)"   # in ~/.bashrc
    eval "$(piriod-adapter completion zsh)"    # in ~/.zshrc (through bashcompinit)
"""

from __future__ import annotations

import argparse
import shlex

FUNCTION = "_piriod_adapter"


def _tree(
    parser: argparse.ArgumentParser,
    words: tuple[str, ...],
    found: dict[str, tuple[list[str], dict[str, list[str]]]],
) -> None:
    offered: list[str] = []
    values: dict[str, list[str]] = {}
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                offered.append(name)
                _tree(sub, (*words, name), found)
            continue
        if action.option_strings:
            offered += action.option_strings
            if action.choices:
                for option in action.option_strings:
                    values[option] = [str(c) for c in action.choices]
        elif action.choices:
            offered += [str(c) for c in action.choices]
    found[" ".join(words)] = (offered, values)


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    found: dict[str, tuple[list[str], dict[str, list[str]]]] = {}
    _tree(parser, (), found)
    paths = sorted(p for p in found if p)
    known = " ".join(shlex.quote(p) for p in paths)
    cases = []
    for path, (offered, values) in sorted(found.items()):
        commands = " ".join(w for w in offered if not w.startswith("-"))
        options = " ".join(w for w in offered if w.startswith("-"))
        lines = [
            f"    {shlex.quote(path)})",
            f"      commands={shlex.quote(commands)}; options={shlex.quote(options)}",
        ]
        if values:
            lines.append('      case "$prev" in')
            for option, choices in sorted(values.items()):
                lines.append(f"        {option}) choices={shlex.quote(' '.join(choices))} ;;")
            lines.append("      esac")
        lines[-1] += " ;;"
        cases.append("\n".join(lines))
    body = "\n".join(cases)
    bash = f"""# piriod-adapter completion, from `piriod-adapter completion {shell}`
{FUNCTION}() {{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
  local path="" word words commands="" options="" choices="" candidate k known=({known})
  for word in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
    candidate="${{path:+$path }}$word"
    for k in "${{known[@]}}"; do
      if [[ "$k" == "$candidate" ]]; then path="$candidate"; break; fi
    done
  done
  case "$path" in
{body}
  esac
  if [[ -n "$choices" ]]; then words="$choices"
  elif [[ "$cur" == -* ]]; then words="$options"
  else words="$commands"; fi
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -F {FUNCTION} piriod-adapter
"""
    if shell == "zsh":
        return (
            "autoload -U +X compinit && compinit\nautoload -U +X bashcompinit && bashcompinit\n"
            + bash
        )
    return bash

"""``rapki-signer completion bash|zsh|fish|powershell``: shell completion, as cobra's command prints it.

The scripts are generated from the argparse parser, so they list exactly the commands and flags
that exist. They complete command names, then the chosen command's flags, then file names.
"""

from __future__ import annotations

import argparse

PROG = "rapki-signer"


def _commands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, list[str]]]:
    """command -> (one-line help, its long flags)."""
    out: dict[str, tuple[str, list[str]]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                flags = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
                flags += [str(c) for a in sub._actions if not a.option_strings for c in a.choices or ()]
                out[name] = (helps.get(name, ""), flags)
    return out


def _bash(commands: dict[str, tuple[str, list[str]]]) -> str:
    cases = "\n".join(f'        {name}) words="{" ".join(flags)}" ;;' for name, (_, flags) in commands.items())
    return f"""# bash completion for {PROG}: source it, or save it in /etc/bash_completion.d/{PROG}
_rapki_signer() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" words=""
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=( $(compgen -W "{" ".join(commands)}" -- "$cur") )
        return 0
    fi
    case "${{COMP_WORDS[1]}}" in
{cases}
    esac
    if [[ "$cur" == -* || "${{COMP_WORDS[1]}}" == completion ]]; then
        COMPREPLY=( $(compgen -W "$words" -- "$cur") )
    else
        COMPREPLY=( $(compgen -f -- "$cur") )
    fi
    return 0
}}
complete -o default -F _rapki_signer {PROG}
"""


def _zsh(commands: dict[str, tuple[str, list[str]]]) -> str:
    return f"""#compdef {PROG}
# zsh completion for {PROG}: through zsh's bash completion layer
autoload -U +X bashcompinit && bashcompinit
{_bash(commands)}"""


def _fish(commands: dict[str, tuple[str, list[str]]]) -> str:
    lines = [f"# fish completion for {PROG}: save as ~/.config/fish/completions/{PROG}.fish"]
    names = " ".join(commands)
    for name, (help_text, flags) in commands.items():
        desc = help_text.replace("'", "\\'")
        lines.append(f"complete -c {PROG} -f -n 'not __fish_seen_subcommand_from {names}' -a {name} -d '{desc}'")
        for flag in flags:
            if flag.startswith("--"):
                lines.append(f"complete -c {PROG} -n '__fish_seen_subcommand_from {name}' -l {flag[2:]}")
            else:
                lines.append(f"complete -c {PROG} -f -n '__fish_seen_subcommand_from {name}' -a {flag}")
    return "\n".join(lines) + "\n"


def _powershell(commands: dict[str, tuple[str, list[str]]]) -> str:
    table = "\n".join(
        f"    '{name}' = @({', '.join(repr(f) for f in flags)})" for name, (_, flags) in commands.items()
    )
    return f"""# PowerShell completion for {PROG}: add to $PROFILE
$rapkiSignerFlags = @{{
{table}
}}
Register-ArgumentCompleter -Native -CommandName '{PROG}' -ScriptBlock {{
    param($wordToComplete, $commandAst, $cursorPosition)
    $words = @($commandAst.CommandElements | ForEach-Object {{ $_.ToString() }})
    if ($words.Count -le 2 -and -not $wordToComplete.StartsWith('-')) {{
        $candidates = $rapkiSignerFlags.Keys
    }} else {{
        $candidates = $rapkiSignerFlags[$words[1]]
    }}
    $candidates | Where-Object {{ $_ -like "$wordToComplete*" }} | Sort-Object | ForEach-Object {{
        [System.Management.Automation.CompletionResult]::new($_, $_, 'ParameterValue', $_)
    }}
}}
"""


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    commands = _commands(parser)
    return {"bash": _bash, "zsh": _zsh, "fish": _fish, "powershell": _powershell}[shell](commands)

"""The ``rapki`` group classes and the conventions every command shares.

Conventions: ``--help`` everywhere; ``--json`` for scripting; exit 0 ok, 1 failure, 2 bad usage or
input with one line on stderr and no traceback (``RapkiError.exit_code`` decides).
Every ``rapki`` run loads this module, so it imports only the standard library, click and ``pki.errors``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Mapping
from gettext import gettext
from pathlib import Path
from typing import Any, NamedTuple

import click
from click.utils import make_default_short_help

from pki.errors import Conflict, RapkiError

_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class LazyCommand(NamedTuple):
    """A subcommand named by where it lives (``"package.module:attribute"``), with the first
    paragraph of its help, which the group lists without importing the module."""

    target: str
    help: str


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use (the lazy group of click's
    documentation). Its help lists them from the short help kept in ``lazy_commands``."""

    def __init__(self, *args: Any, lazy_commands: Mapping[str, LazyCommand] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = self.lazy_commands.get(cmd_name)
        if entry is None:
            return super().get_command(ctx, cmd_name)
        return load_command(entry.target)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click's, with the short help of a command not loaded yet taken from the table."""
        listed: list[tuple[str, str | click.Command]] = []
        for name in self.list_commands(ctx):
            entry = self.lazy_commands.get(name)
            if entry is not None:
                listed.append((name, entry.help))
            elif (command := super().get_command(ctx, name)) is not None and not command.hidden:
                listed.append((name, command))
        if not listed:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in listed)  # click's spacing
        rows = [(name, short_help(about, limit)) for name, about in listed]
        with formatter.section(gettext("Commands")):
            formatter.write_dl(rows)


def short_help(about: str | click.Command, limit: int) -> str:
    """What a group's help lists beside a command: click's shortening of its help to ``limit``."""
    if isinstance(about, click.Command):
        return about.get_short_help_str(limit)
    return make_default_short_help(about, limit).strip()


def load_command(target: str) -> click.Command:
    """The click command at ``"package.module:attribute"``."""
    module_name, _, attribute = target.partition(":")
    command = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(command, click.Command):
        raise TypeError(f"{target} is not a click command")
    return command


class RapkiGroup(LazyGroup):
    """A click group that turns library errors, and click's own usage errors (unknown option, bad
    value, missing argument), into one stderr line and the right exit code."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            if isinstance(exc, _NO_ARGS_IS_HELP):  # a bare group (``rapki``, ``rapki ca``): its help
                exc.show()
                sys.exit(exc.exit_code)
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"rapki: error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"rapki: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("rapki: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RapkiError as exc:
            click.echo(f"rapki: error: {exc}", err=True)
            sys.exit(exc.exit_code)


def default_home() -> Path:
    return Path(os.environ.get("RAPKI_HOME") or "rapki-data")


home_option = click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The rapki home directory (default: $RAPKI_HOME, else ./rapki-data).",
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def resolve_home(home: Path | None) -> Path:
    return home if home is not None else default_home()


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def ensure_port_free(host: str, port: int) -> None:
    """Refuse, in one line and before anything is created, an address another program listens
    on (gunicorn alone would retry for seconds and log a page of errors). Port 0 is always free."""
    import socket

    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise Conflict(f"cannot listen on {host}:{port}: {exc.strerror}; stop what uses it or choose "
                           "another --port") from exc

"""The ``rapki`` command group and the conventions every command shares.

Conventions: ``--help`` everywhere; ``--json`` for scripting; exit 0 ok, 1 failure, 2 bad usage or
input with one line on stderr and no traceback (``RapkiError.exit_code`` decides).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from pki.errors import Conflict, RapkiError

_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class RapkiGroup(click.Group):
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


@click.group(cls=RapkiGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rapki", prog_name="rapki")
def main() -> None:
    """rapki: a private CA for AWS IAM Roles Anywhere."""


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

"""``rapki check``: is this home ready to sign on this host (database, issuing CA keys, passphrase)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from service.cli.base import echo_json, home_option, json_option, resolve_home


@click.command()
@home_option
@json_option
def check(home: Path | None, as_json: bool) -> None:
    """Check this home on this host: database, every issuing CA's key, root key, passphrase."""
    from pki.ca.authority import CertificateAuthority
    from pki.ca.checks import check_home

    findings = check_home(CertificateAuthority.open(resolve_home(home)))
    if as_json:
        echo_json([f.to_dict() for f in findings])
    else:
        for f in findings:
            click.echo(f"{f.level:<8} {f.what}: {f.message}")
    if any(f.level == "error" for f in findings):
        sys.exit(1)

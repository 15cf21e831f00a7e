"""``rapki audit``: the listing (the group itself, as before), ``audit verify`` and ``audit export``."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from pki.auditchain import ChainHead, to_json_line
from pki.errors import InvalidInput
from pki.x509.durations import parse_duration
from service.cli.base import echo_json, home_option, json_option
from service.cli.ca_commands import open_ca

_LISTING_DEFAULTS: dict[str, Any] = {"limit": 50, "action": None, "actor": None, "target": None, "since": None,
                                     "as_json": False}


def _since(text: str | None) -> datetime | None:
    """``24h``/``7d`` (that long ago) or an ISO 8601 time (UTC unless it says otherwise)."""
    if not text:
        return None
    try:
        return datetime.now(UTC) - parse_duration(text)
    except InvalidInput:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidInput(f"--since {text!r}: give a duration (24h, 7d) or an ISO 8601 time") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@click.group(invoke_without_command=True)
@home_option
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True, help="Newest entries first.")
@click.option("--action", default=None, help="e.g. certificate.issue, or a prefix ending in a dot: certificate.")
@click.option("--actor", default=None, help="A part of the actor, e.g. enrollment-token: or cli:alice.")
@click.option("--target", default=None, help="A serial, token id, issuer or profile name.")
@click.option("--since", default=None, help="Only entries this recent, e.g. 24h or 7d.")
@json_option
@click.pass_context
def audit(ctx: click.Context, home: Path | None, limit: int, action: str | None, actor: str | None,
          target: str | None, since: str | None, as_json: bool) -> None:
    """Read the audit log (who did what, when; never secrets).

    Without a command, lists the newest entries. 'rapki audit verify' checks the log's hash
    chain; 'rapki audit export' writes it as JSON lines for a SIEM.
    """
    if ctx.invoked_subcommand is not None:
        given = {"limit": limit, "action": action, "actor": actor, "target": target, "since": since,
                 "as_json": as_json}
        if home is not None or given != _LISTING_DEFAULTS:
            raise click.UsageError(f"the listing options go without a command: 'rapki audit "
                                   f"{ctx.invoked_subcommand} --help' shows its own")
        return
    if since:
        parse_duration(since)  # a bad duration is refused as before (exit 2)
    entries = open_ca(home).audit_entries(limit, action=action, actor=actor, target=target, since=_since(since))
    if as_json:
        echo_json(entries)
        return
    for e in entries:
        details = " ".join(f"{k}={v}" for k, v in (e["details"] or {}).items() if v is not None)
        click.echo(f"{e['at']}  {e['action']:<24} {e['target']:<34} {e['actor']}" + (f"  {details}" if details else ""))


def _head(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> list[ChainHead]:
    try:
        return [ChainHead.parse(v) for v in values]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@audit.command("verify")
@home_option
@click.option("--expect-head", "expect", multiple=True, callback=_head, metavar="SEQ:HASH",
              help="Fail unless the chain holds this head (a copy kept elsewhere: a SIEM, a publish log). Repeatable.")
@json_option
def audit_verify(home: Path | None, expect: list[ChainHead], as_json: bool) -> None:
    """Check the audit log's hash chain: exit 1 naming the first entry edited, missing or moved.

    Also checks the heads recorded with CRL publications and given with --expect-head. Someone
    who can write to the database can rewrite the whole chain: compare the head printed here
    with a copy kept outside it (see docs/audit.md).
    """
    result = open_ca(home).verify_audit_log(expect=expect)
    if as_json:
        echo_json(result.to_dict())
        sys.exit(0 if result.ok else 1)
    report = result.report
    if result.ok:
        anchors = "".join(f"; holds the head {a.head.seq} {a.source}" for a in result.anchors)
        click.echo(report.summary() + anchors)
        return
    if report.head is not None:
        click.echo(f"entries 1 to {report.head.seq} check out (head {report.head})")
    for problem in result.problems:
        click.echo(f"rapki: error: {problem}", err=True)
    sys.exit(1)


@audit.command("export")
@home_option
@click.option("--json", "as_json", is_flag=True, help="JSON lines (the only format, and the default).")
@click.option("--after-id", type=click.IntRange(0), default=0, show_default=True,
              help="Only entries numbered above this: the last 'seq' shipped before.")
@click.option("--since", default=None, help="Only entries this recent: 24h, 7d, or an ISO 8601 time.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of standard output.")
def audit_export(home: Path | None, as_json: bool, after_id: int, since: str | None, out: Path | None) -> None:
    """Write the audit log as JSON lines, oldest first, with its hash chain (for a SIEM).

    Each line holds seq, at, actor, action, target, details, prev_hash and hash; ship the lines
    as they are, and check them anywhere with pki.auditchain.verify (see docs/audit.md).
    """
    del as_json  # the only format
    entries = open_ca(home).audit_export(after=after_id, since=_since(since))
    stream = out.open("w") if out is not None else sys.stdout
    try:
        for entry in entries:
            stream.write(to_json_line(entry) + "\n")
    finally:
        if out is not None:
            stream.close()

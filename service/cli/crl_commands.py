"""``rapki crl build``, ``rapki crl publish``, ``rapki crl status``, and the publication ``rapki revoke``
makes with ``--publish``.

Publication talks to AWS with the options of ``service.cli.aws_commands``; the logic lives in
``pki.aws.publish``; this module parses and prints.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pki.x509.durations import parse_duration
from service.cli.aws_commands import aws_options, make_options, say_retry
from service.cli.base import echo_json, home_option, json_option
from service.cli.ca_commands import open_ca

if TYPE_CHECKING:
    from pki.ca.authority import CertificateAuthority


@click.group()
def crl() -> None:
    """Certificate revocation lists."""


@crl.command("build")
@home_option
@click.option("--issuer", default=None, help="Issuing CA name (default: the active one).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here (default: stdout).")
@click.option("--format", "fmt", type=click.Choice(["pem", "der"]), default="pem", show_default=True)
@click.option("--validity", default=None, help="nextUpdate - thisUpdate (default: [crl].validity, 7d).")
@json_option
def crl_build(home: Path | None, issuer: str | None, out: Path | None, fmt: str, validity: str | None,
              as_json: bool) -> None:
    """Sign a new CRL (next CRLNumber) with the revoked, unexpired certificates."""
    from pki.x509.crl import ROLES_ANYWHERE_CRL_LIMIT

    built = open_ca(home).build_crl(issuer, validity=parse_duration(validity) if validity else None)
    data = built.pem if fmt == "pem" else built.der
    pem_size = len(built.pem)
    report = {
        "crl_number": built.number, "entries": built.entries, "pem_bytes": pem_size,
        "limit_bytes": ROLES_ANYWHERE_CRL_LIMIT, "budget_used": round(pem_size / ROLES_ANYWHERE_CRL_LIMIT, 4),
        "this_update": built.this_update.isoformat(), "next_update": built.next_update.isoformat(),
    }
    if out is not None:
        from pki.x509.pem import Pem

        Pem(data).write_to_path(out)
        report["out"] = str(out)
    elif not as_json:
        click.get_binary_stream("stdout").write(data)
    message = (f"CRL #{built.number}: {built.entries} entries, {pem_size:,} bytes PEM "
               f"({report['budget_used']:.1%} of the Roles Anywhere limit)")
    if as_json:
        echo_json(report)
    else:
        click.echo(message, err=True)


@crl.command("publish")
@home_option
@click.option("--trust-anchor-arn", default=None,
              help="Trust anchor to publish to (default: the one 'rapki aws register' stored).")
@aws_options
@click.option("--name", default=None, help="CRL name prefix on the anchor (default: the --name given to 'rapki aws "
              "register', else rapki; the CRL is NAME-issuing-N).")
@click.option("--s3", "s3_url", default=None, metavar="s3://BUCKET/PREFIX",
              help="Upload each issuing CA's DER CRL to PREFIX/<issuer>.crl, where [crl].distribution_url "
                   "leads. Alone, only this runs; add --roles-anywhere to import into the trust anchor too.")
@click.option("--s3-endpoint-url", default=None, help="S3 endpoint (default: $AWS_ENDPOINT_URL_S3, else AWS's).")
@click.option("--roles-anywhere/--no-roles-anywhere", "roles_anywhere", default=None,
              help="Also (or not) import the CRLs into the trust anchor [default: only without --s3].")
@click.option("--dry-run", is_flag=True, help="Say what would be sent; change nothing here or in AWS.")
@click.option("--lock-timeout", type=click.FloatRange(0, 3600), default=120.0, show_default=True,
              help="Seconds to wait for another publisher to finish.")
@click.option("--quiet", is_flag=True, help="Print nothing when nothing changed (for cron mail).")
@json_option
def crl_publish(home: Path | None, trust_anchor_arn: str | None, region: str | None, endpoint_url: str | None,
                ca_bundle: str | None, aws_profile: str | None, fips: bool | None, name: str | None,
                s3_url: str | None, s3_endpoint_url: str | None, roles_anywhere: bool | None,
                dry_run: bool, lock_timeout: float, quiet: bool, as_json: bool) -> None:
    """Publish the current CRL of each issuing CA to a Roles Anywhere trust anchor and/or S3 (cron-safe)."""
    from pki.aws.publish import publish

    options = make_options(region, endpoint_url, ca_bundle, aws_profile, fips, quiet=quiet or as_json)
    authority = open_ca(home)
    result: dict[str, Any] = {}
    if s3_url is not None:
        result["s3"] = _publish_s3(authority, s3_url, options, s3_endpoint_url, dry_run, lock_timeout,
                                   show=not as_json, quiet=quiet)
    report = None
    if roles_anywhere or (roles_anywhere is None and s3_url is None):
        report = publish(authority, trust_anchor_arn, options=options, name=name, dry_run=dry_run,
                         lock_timeout=lock_timeout)
        result = {**report.to_dict(), **result}
    if as_json:
        echo_json(result)
    elif report is not None and not (quiet and report.ok and report.writes == 0 and not report.warnings
                                     and not any(p.built for p in report.publications)):
        print_report(report)
    if report is not None and not report.ok:
        click.echo(f"rapki: error: {report.errors[0]}", err=True)
        sys.exit(1)


def _publish_s3(authority: CertificateAuthority, url: str, options: Any, endpoint_url: str | None,
                dry_run: bool, lock_timeout: float, *, show: bool, quiet: bool) -> dict[str, Any]:
    """``--s3``: the upload, one line per issuer (none with ``quiet`` when nothing changed)."""
    from pki.aws.s3publish import S3Destination, publish_s3

    report = publish_s3(authority, url, options=options, endpoint_url=endpoint_url, dry_run=dry_run,
                        lock_timeout=lock_timeout)
    bucket = S3Destination.parse(url).bucket
    if show and not (quiet and report.writes == 0):
        for pub in report.publications:
            click.echo(f"{pub.issuer}: CRL #{pub.crl_number} ({pub.entries} entries, {pub.size:,} bytes) "
                       f"{pub.action} s3://{bucket}/{pub.key}")
    return report.to_dict()


def print_report(report: Any, err: bool = False) -> None:
    for pub in report.publications:
        where = f" {pub.crl_id}" if pub.crl_id else ""
        click.echo(f"{pub.crl_name}: CRL #{pub.crl_number} ({pub.entries} entries, {pub.size:,} bytes, "
                   f"{pub.budget_used:.1%} of the limit) {pub.action}{where}"
                   + (f" [{', '.join(pub.writes)}]" if pub.writes else ""), err=err)
        for note in pub.notes:
            click.echo(f"  note: {note}", err=err)
        if pub.audit_head:  # a copy for the cron log: 'rapki audit verify --expect-head' checks it
            click.echo(f"  audit chain head: {pub.audit_head}", err=err)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{report.writes} write call(s), {sum(report.calls.values())} call(s), {report.retries} retr"
               f"{'y' if report.retries == 1 else 'ies'}, {report.seconds:.2f} s"
               + (" (dry run)" if report.dry_run else ""), err=err)


def publish_after_revoke(authority: CertificateAuthority, requested: bool | None, quiet: bool) -> dict[str, Any] | None:
    """``rapki revoke --publish`` (or ``[roles_anywhere].auto_publish``): publish right after revoking."""
    from pki.aws.client import AwsOptions
    from pki.aws.publish import PublishError, auto_publish_enabled, publish

    if not (requested or (requested is None and auto_publish_enabled(authority))):
        return None
    try:
        report = publish(authority, options=AwsOptions(on_retry=None if quiet else say_retry))
    except Exception as exc:
        from pki.errors import RapkiError

        if not isinstance(exc, RapkiError):
            raise
        raise PublishError(f"revoked, but publishing the CRL failed: {exc}; run 'rapki crl publish'") from exc
    if not report.ok:  # what the anchor can hold was published; the rest needs the fix named
        raise PublishError(f"revoked, but the CRL publication is incomplete: {report.errors[0]}")
    if not quiet:
        print_report(report, err=True)
    return report.to_dict()


@crl.command("status")
@home_option
@click.option("--trust-anchor-arn", default=None, help="Compare with what was published here (default: registered).")
@click.option("--check", is_flag=True, help="Exit 1 when there is a warning (for monitoring).")
@json_option
def crl_status_command(home: Path | None, trust_anchor_arn: str | None, check: bool, as_json: bool) -> None:
    """Local vs published CRL per issuing CA: numbers, age, size budget, and what needs doing."""
    from pki.aws.publish import crl_status

    status = crl_status(open_ca(home), trust_anchor_arn)
    if as_json:
        echo_json(status)
    else:
        click.echo(f"trust anchor: {status['trust_anchor_arn'] or '(none registered)'}")
        for item in status["issuers"]:
            click.echo(
                f"{item['issuer']}{' (active)' if item['active'] else ''}: local #{item['local_crl_number'] or '-'}"
                f" published #{item['published_crl_number'] or '-'}, {item['entries']} entries, "
                f"{item['pem_bytes']:,} bytes ({item['budget_used']:.1%} of 300,000), "
                f"age {crl_age(item['age_seconds'])}, "
                f"next update {item['next_update'] or '-'}"
            )
        for warning in status["warnings"]:
            click.echo(f"warning: {warning}")
    if check and status["warnings"]:
        sys.exit(1)


def crl_age(seconds: int | None) -> str:
    """``2h05m``; a CRL signed "in the future" (clocks apart) reads ``in 1h47m (clock skew?)``, never ``-1h47m``;
    under a minute ahead counts as ``0h00m``."""
    if seconds is None:
        return "-"
    if -60 < seconds < 0:
        seconds = 0
    hours, minutes = abs(seconds) // 3600, abs(seconds) % 3600 // 60
    return f"{hours}h{minutes:02d}m" if seconds >= 0 else f"in {hours}h{minutes:02d}m (clock skew?)"

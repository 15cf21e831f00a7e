"""``rapki issue``, ``revoke``, ``list`` and ``show``."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pki.errors import InvalidInput, RapkiError
from pki.x509.crl import REASON_NAMES
from pki.x509.durations import parse_duration
from pki.x509.keys import KeyType
from service.cli.base import echo_json, home_option, json_option
from service.cli.ca_commands import KEY_TYPES, open_ca
from service.cli.crl_commands import publish_after_revoke

if TYPE_CHECKING:
    from pki.ca.values import IssuedCertificate


@click.command()
@home_option
@click.option("--profile", "profile_name", required=True, help="Issuance profile.")
@click.option("--cn", default=None, help="Subject CN (the STS source identity). Taken from the CSR if omitted.")
@click.option("--san", multiple=True, help="dns:NAME or uri:URI (repeatable).")
@click.option("--csr", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Sign this CSR (PEM or DER) instead of making a key.")
@click.option("--key-type", type=click.Choice(KEY_TYPES), default=None,
              help="Key to make here (default: the profile's first key type).")
@click.option("--ttl", default=None, help="Lifetime, e.g. 24h (default: the profile's).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for cert.pem, chain.pem and key.pem (0600, only when the key is made here).")
@json_option
def issue(home: Path | None, profile_name: str, cn: str | None, san: tuple[str, ...], csr: Path | None,
          key_type: str | None, ttl: str | None, out: Path, as_json: bool) -> None:
    """Issue a workload certificate."""
    if csr is not None and key_type is not None:
        raise InvalidInput("give --csr or --key-type, not both")
    authority = open_ca(home)
    written: dict[str, Path] = {}

    def write_files(made: IssuedCertificate) -> None:
        """Run before the certificate is committed: if the files cannot be written, nothing is recorded."""
        written.update(_write_files(made, out))

    try:
        issued = authority.issue(
            profile_name, cn=cn, sans=san, csr=csr.read_bytes() if csr else None,
            key_type=KeyType(key_type) if key_type else None, ttl=parse_duration(ttl) if ttl else None,
            before_commit=write_files,
        )
    except BaseException:
        for path in written.values():  # written, but the record did not commit: no unrecorded certificate
            path.unlink(missing_ok=True)
        raise
    info: dict[str, Any] = {
        "serial": issued.serial_hex,
        "subject": issued.subject,
        "not_after": issued.certificate.not_valid_after_utc.isoformat(),
        "files": {k: str(v) for k, v in written.items()},
    }
    if as_json:
        echo_json(info)
        return
    click.echo(f"issued {info['serial']} {info['subject']} until {info['not_after']}")
    for kind, path in info["files"].items():
        click.echo(f"  {kind}: {path}")


# An --out that cannot be used is bad input (exit 2); anything else, such as a full disk, a failure (exit 1).
_UNUSABLE_DIRECTORY = {errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS}


def _write_files(issued: IssuedCertificate, out: Path) -> dict[str, Path]:
    try:
        return issued.write_to(out)
    except OSError as exc:
        error = InvalidInput if exc.errno in _UNUSABLE_DIRECTORY else RapkiError
        where = exc.filename or out
        raise error(f"cannot write {where}: {exc.strerror or exc}; nothing was issued or recorded") from exc


@click.command()
@home_option
@click.argument("serial")
@click.option("--reason", type=click.Choice(REASON_NAMES, case_sensitive=False), default=None,
              help="RFC 5280 reason (default: none, which saves CRL space).")
@click.option("--publish/--no-publish", "publish_crl", default=None,
              help="Publish the CRL to Roles Anywhere right away (default: [roles_anywhere].auto_publish).")
@json_option
def revoke(home: Path | None, serial: str, reason: str | None, publish_crl: bool | None, as_json: bool) -> None:
    """Revoke certificate SERIAL (hex as 'rapki list' shows, or decimal)."""
    authority = open_ca(home)
    result = authority.revoke(serial, reason=reason)
    record = result.record
    publication = publish_after_revoke(authority, publish_crl, quiet=as_json)  # logic: pki.aws.publish
    if as_json:
        echo_json({**record.to_dict(), "already_revoked": result.already_revoked, "publication": publication})
        return
    if result.already_revoked:
        click.echo(f"{record.serial} was already revoked at {record.revoked_at:%Y-%m-%dT%H:%M:%SZ}; nothing changed")
    else:
        done = "the CRL is published" if publication else "run 'rapki crl publish' to enforce it in Roles Anywhere"
        click.echo(f"revoked {record.serial} ({record.common_name}); {done}")


@click.command("list")
@home_option
@click.option("--status", type=click.Choice(["active", "superseded", "revoked", "expired"]), default=None,
              help="active: usable and not renewed; superseded: renewed, the newer one is in use.")
@click.option("--profile", "profile_name", default=None)
@click.option("--name", default=None, help="Only certificates whose CN or a SAN contains this text (any case).")
@click.option("--expiring-within", default=None, help="Only certificates expiring within this duration, e.g. 7d.")
@click.option("--limit", type=click.IntRange(1), default=None)
@json_option
def list_certificates(home: Path | None, status: str | None, profile_name: str | None, name: str | None,
                      expiring_within: str | None, limit: int | None, as_json: bool) -> None:
    """List issued certificates."""
    records = open_ca(home).list_certificates(
        status=status, profile=profile_name, name=name,
        expiring_within=parse_duration(expiring_within) if expiring_within else None, limit=limit,
    )
    if as_json:
        echo_json([r.to_dict() for r in records])
        return
    for r in records:
        click.echo(f"{r.serial:<40} {r.status():<10} {r.not_after:%Y-%m-%d %H:%M}Z {r.profile:<16} {r.common_name}")


@click.command()
@home_option
@click.argument("serial")
@click.option("--pem", "as_pem", is_flag=True, help="Print the certificate PEM.")
@json_option
def show(home: Path | None, serial: str, as_pem: bool, as_json: bool) -> None:
    """Show certificate SERIAL."""
    record = open_ca(home).find(serial)
    if as_pem:
        from pki.x509.pem import Pem

        click.echo(Pem.of_certificates([record.certificate]).text(), nl=False)
    elif as_json:
        echo_json(record.to_dict())
    else:
        for key, value in record.to_dict().items():
            click.echo(f"{key + ':':<20} {value}")


@click.command()
@home_option
@click.option("--expired-before", "age", required=True,
              help="Delete certificates that expired more than this long ago, e.g. 90d.")
@click.option("--archive", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append each deleted certificate (record and DER) to this JSON-lines file first.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; change nothing.")
@json_option
def prune(home: Path | None, age: str, archive: Path | None, dry_run: bool, as_json: bool) -> None:
    """Delete long-expired certificates from the inventory (audited; CRL entries and the audit log kept)."""
    from datetime import UTC, datetime

    cutoff = datetime.now(UTC) - parse_duration(age)
    ca = open_ca(home)
    if archive is None or dry_run:
        result = ca.prune_expired(cutoff, dry_run=dry_run)
    else:
        try:
            with archive.open("ab") as sink:
                result = ca.prune_expired(cutoff, archive=sink)
        except OSError as exc:
            raise InvalidInput(f"cannot write the archive {archive}: {exc.strerror or exc}") from None
    if as_json:
        echo_json({"expired_before": result.expired_before.isoformat(), "count": result.count,
                   "dry_run": result.dry_run, "archive": str(archive) if archive and not dry_run else None})
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {result.count} certificate(s) expired before {result.expired_before:%Y-%m-%d %H:%M}Z"
               + (f"; archived to {archive}" if archive and not dry_run else ""))

"""The certificate inventory of ``CertificateAuthority``: every certificate issued, found by
serial or listed by status, profile and expiry."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import orjson
from sqlalchemy.engine import Connection, Row

from pki.ca._issuers import IssuingCAs
from pki.ca.values import CertificateRecord
from pki.errors import InvalidInput, NotFound
from pki.store import certificates as certificate_rows
from pki.store.times import utc, utc_or_none
from pki.x509.serials import parse_serial, serial_hex

PRUNE_BATCH = 10_000  # certificates per transaction: the writer lock is never held for long


@dataclass(frozen=True)
class PruneResult:
    expired_before: datetime
    count: int  # deleted (or, in a dry run, that would be)
    dry_run: bool


def archive_line(record: CertificateRecord) -> bytes:
    """One JSON line of a prune's archive: the record as ``rapki list --json`` shows it, with its
    DER (base64), so the certificate itself outlives its row."""
    return orjson.dumps({**record.to_dict(), "der": base64.b64encode(record.der).decode()}) + b"\n"


class Inventory(IssuingCAs):
    """Reading the certificates recorded."""

    def _to_record(self, row: Row[Any]) -> CertificateRecord:
        return CertificateRecord(
            serial=row.serial, issuer=self._issuer_by_id(row.issuer_id).name, subject=row.subject,
            common_name=row.common_name, sans=list(row.sans), profile=row.profile, key_type=row.key_type,
            not_before=utc(row.not_before), not_after=utc(row.not_after), revoked_at=utc_or_none(row.revoked_at),
            revocation_reason=row.revocation_reason, superseded_by=row.superseded_by,
            fingerprint=row.fingerprint, der=row.der,
        )

    def find(self, serial: str | int) -> CertificateRecord:
        with self.db.engine.connect() as conn:
            return self._to_record(self._find_row(conn, serial))

    def _find_row(self, conn: Connection, serial: str | int) -> Row[Any]:
        candidates = [serial] if isinstance(serial, int) else parse_serial(serial)
        for candidate in candidates:
            rows = certificate_rows.with_serial(conn, serial_hex(candidate))
            if len(rows) > 1:
                raise InvalidInput(f"serial {serial} exists under several issuing CAs: use the fingerprint")
            if rows:
                return rows[0]
        raise NotFound(f"no certificate with serial {serial}: see 'rapki list'")

    def list_certificates(self, *, status: str | None = None, profile: str | None = None,
                          expiring_within: timedelta | None = None, name: str | None = None,
                          limit: int | None = None) -> list[CertificateRecord]:
        """In issuance order. ``status``: active, superseded, revoked or expired (now, as
        ``CertificateRecord.status`` says); ``expiring_within``: unexpired and expiring within that
        time; ``name``: the CN or a SAN contains it, case-insensitive."""
        if status is not None and status not in certificate_rows.STATUSES:
            raise InvalidInput(f"unknown status {status!r}: use {', '.join(certificate_rows.STATUSES)}")
        with self.db.engine.connect() as conn:
            rows = certificate_rows.matching(conn, now=datetime.now(UTC), status=status, profile=profile,
                                             expiring_within=expiring_within, name=name, limit=limit)
            return [self._to_record(row) for row in rows]

    def prune_expired(self, expired_before: datetime, *, archive: IO[bytes] | None = None,
                      dry_run: bool = False, actor: str | None = None) -> PruneResult:
        """Delete the certificates whose notAfter is before ``expired_before`` (not later than
        now), so that the inventory does not grow forever.

        Only expired certificates go: a revoked certificate is on its issuer's CRL until it
        expires (``revoked_unexpired``), so none that a CRL needs is touched. The audit log is
        left whole (its chain does not cover certificate rows); each batch deleted is audited
        (``certificate.prune``) in the transaction that deletes it. With ``archive``, each
        batch's records (``archive_line``) are written and synced before the batch is deleted: a
        crash between the two leaves lines for rows still present, never rows lost unrecorded.
        """
        if expired_before > datetime.now(UTC):
            raise InvalidInput("--expired-before must not be in the future: it would delete certificates still valid")
        if dry_run:
            with self.db.engine.connect() as conn:
                return PruneResult(expired_before, certificate_rows.count_expired_before(conn, expired_before), True)
        total, after = 0, 0
        while True:
            with self.db.engine.begin() as conn:
                rows = certificate_rows.expired_before(conn, expired_before, after_id=after, limit=PRUNE_BATCH)
                if not rows:
                    return PruneResult(expired_before, total, False)
                after = rows[-1].id
                if archive is not None:
                    archive.write(b"".join(archive_line(self._to_record(row)) for row in rows))
                    archive.flush()
                    os.fsync(archive.fileno())
                deleted = certificate_rows.delete_ids(conn, [row.id for row in rows], expired_before)
                total += deleted
                self.audit_in(conn, actor, "certificate.prune", f"{rows[0].serial}..{rows[-1].serial}",
                              {"expired_before": expired_before.isoformat(), "deleted": deleted,
                               "archived": archive is not None})

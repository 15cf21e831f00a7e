"""The certificate inventory of ``CertificateAuthority``: every certificate issued, found by
serial or listed by status, profile and expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection, Row

from pki.ca._issuers import IssuingCAs
from pki.ca.values import CertificateRecord
from pki.errors import InvalidInput, NotFound
from pki.store import certificates as certificate_rows
from pki.store.times import utc, utc_or_none
from pki.x509.serials import parse_serial, serial_hex


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

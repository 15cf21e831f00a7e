"""Revocation and CRLs in ``CertificateAuthority``: revoking a certificate, and each issuer's
CRL built, numbered and recorded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from sqlalchemy.engine import Connection

from pki.ca._inventory import Inventory
from pki.ca.values import Issuer, Revocation
from pki.custody.keys import signing_key
from pki.store import certificates as certificate_rows
from pki.store import crls as crl_rows
from pki.store.times import utc, utc_or_none
from pki.x509.crl import BuiltCrl, RevokedEntry, build_crl, check_size, parse_reason
from pki.x509.external import SigningKey

_REASONS = {r.value: r for r in x509.ReasonFlags}


class RevocationAndCrls(Inventory):
    """Revoking, and the CRLs that say so."""

    def revoke(self, serial: str | int, *, reason: str | x509.ReasonFlags | None = None,
               actor: str | None = None) -> Revocation:
        """Revoke by serial. Revoking twice changes nothing and says so (``already_revoked``)."""
        flag = reason if isinstance(reason, x509.ReasonFlags) else parse_reason(reason)
        now = datetime.now(UTC)
        with self.db.engine.begin() as conn:
            row = self._find_row(conn, serial)
            if row.revoked_at is not None:
                return Revocation(self._to_record(row), already_revoked=True)
            if not certificate_rows.mark_revoked(conn, row.id, at=now, reason=flag.value):
                # a concurrent revoke won the race
                return Revocation(self._to_record(certificate_rows.with_id(conn, row.id)), already_revoked=True)
            self.audit_in(conn, actor, "certificate.revoke", row.serial, {"reason": flag.value})
            row = certificate_rows.with_id(conn, row.id)
        return Revocation(self._to_record(row), already_revoked=False)

    def revoked_entries(self, conn: Connection, issuer: Issuer, now: datetime) -> list[RevokedEntry]:
        """Revoked and unexpired certificates of ``issuer`` (RFC 5280 lets expired entries go)."""
        rows = certificate_rows.revoked_unexpired(conn, issuer.id, now)
        return [RevokedEntry(int(s, 16), utc(at), _REASONS[reason]) for s, at, reason in rows]

    def build_crl(self, issuer: str | None = None, *, validity: timedelta | None = None,
                  actor: str | None = None) -> BuiltCrl:
        """Sign a new CRL with the next CRLNumber (strictly increasing, never reused: the number is
        taken and the CRL recorded in one transaction, which concurrent builders serialise on)."""
        target = self.issuer(issuer)
        key = signing_key(self.issuer_key(target))
        with self.db.engine.begin() as conn:
            number = crl_rows.take_number(conn, target.id)
            now = datetime.now(UTC).replace(microsecond=0)
            # check_size raises before anything is recorded: the number is not consumed
            built = self.sign_crl(conn, target, key, number, now, validity)
            crl_rows.save(conn, target.id, this_update=now, next_update=built.next_update, entries=built.entries,
                          der=built.der)
            self.audit_in(conn, actor, "crl.build", target.name, {"crl_number": number, "entries": built.entries})
        return built

    def sign_crl(self, conn: Connection, issuer: Issuer, key: SigningKey, number: int, now: datetime,
                 validity: timedelta | None = None) -> BuiltCrl:
        """``issuer``'s CRL number ``number`` as of ``now``, signed and size-checked but not recorded
        (``build_crl`` records it; a dry-run publication only looks): its revoked, unexpired
        certificates, nextUpdate ``validity`` (default ``[crl].validity``) on but never past the
        issuer's notAfter, the Issuing Distribution Point when ``[crl].distribution_url`` is set."""
        next_update = min(now + (validity or self.config.crl_validity), issuer.not_after)
        built = build_crl(self.revoked_entries(conn, issuer, now), issuer_cert=issuer.certificate, issuer_key=key,
                          number=number, this_update=now, next_update=next_update,
                          distribution_point=bool(self.config.crl_distribution_url))
        check_size(built)
        return built

    def current_crl(self, issuer: str | None = None, *, republish_before: timedelta | None = None,
                    build: bool = True, actor: str | None = None) -> BuiltCrl | None:
        """The last CRL built for ``issuer`` while it is still current, else a new one.

        Current means: it lists exactly the revoked, unexpired certificates of the issuer today
        and its nextUpdate is more than ``republish_before`` (default ``[crl].republish_before``)
        away. A publisher run from cron calls this every few minutes; building each time would burn
        a CRLNumber per run and make every run a write to Roles Anywhere. With ``build=False`` a
        stale CRL gives None instead of a new one (dry runs change nothing).
        """
        target = self.issuer(issuer)
        margin = self.config.crl_republish_before if republish_before is None else republish_before
        now = datetime.now(UTC)
        with self.db.engine.connect() as conn:
            row = crl_rows.state(conn, target.id)
            if row.der is not None and row.next_update is not None and utc(row.next_update) - now > margin:
                stored = x509.load_der_x509_crl(row.der)
                listed = {entry.serial_number for entry in stored}
                wanted = {entry.serial for entry in self.revoked_entries(conn, target, now)}
                if listed == wanted:
                    return BuiltCrl(crl=stored, number=row.crl_number, entries=len(listed))
        return self.build_crl(target.name, actor=actor) if build else None

    def crl_state(self, issuer: str | None = None) -> dict[str, Any]:
        target = self.issuer(issuer)
        with self.db.engine.connect() as conn:
            row = crl_rows.state(conn, target.id)
        return {
            "issuer": target.name, "crl_number": row.crl_number,
            "this_update": utc_or_none(row.this_update), "next_update": utc_or_none(row.next_update),
            "entries": row.entries, "der": row.der,
        }

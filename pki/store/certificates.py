"""The certificate inventory: every certificate issued, its revocation and its successor."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, bindparam, cast, func, or_, select, update
from sqlalchemy.engine import Connection, Row

from pki.store.schema import certificates
from pki.store.statements import PreparedInsert, PreparedStatement

# The issuance path's statements, compiled once per dialect and run in ``Database.write``
# transactions (see ``pki.store.statements``).
INSERT_ROW = PreparedInsert(certificates)
# Conditional, so two renewals of one certificate cannot both succeed: the database serialises the
# two UPDATEs (SQLite's single writer, PostgreSQL's row lock) and the second changes no row.
MARK_SUPERSEDED = PreparedStatement(
    update(certificates).where(and_(certificates.c.serial == bindparam("old_serial"),
                                    certificates.c.superseded_by.is_(None)))
    .values(superseded_by=bindparam("new_serial")),
    {"old_serial": certificates.c.serial, "new_serial": certificates.c.superseded_by})

STATUSES = ("active", "superseded", "revoked", "expired")  # as CertificateRecord.status() decides


def with_serial(conn: Connection, serial: str) -> Sequence[Row[Any]]:
    """The certificates with this serial (lowercase hex): one per issuer at most."""
    return conn.execute(select(certificates).where(certificates.c.serial == serial)).all()


def with_id(conn: Connection, certificate_id: int) -> Row[Any]:
    return conn.execute(select(certificates).where(certificates.c.id == certificate_id)).one()


def matching(conn: Connection, *, now: datetime, status: str | None = None, profile: str | None = None,
             expiring_within: timedelta | None = None, name: str | None = None,
             limit: int | None = None) -> Sequence[Row[Any]]:
    """Certificates in issuance order. ``status``: one of ``STATUSES`` (at ``now``), or None for all;
    ``name``: the CN or a SAN contains it (case-insensitive)."""
    c = certificates.c
    query = select(certificates).order_by(c.id)
    if profile:
        query = query.where(c.profile == profile)
    if name:
        wanted = name.lower()
        query = query.where(or_(func.lower(c.common_name).contains(wanted, autoescape=True),
                                func.lower(cast(c.sans, String)).contains(wanted, autoescape=True)))
    unexpired_and_unrevoked = and_(c.revoked_at.is_(None), c.not_after > now)
    if status == "revoked":
        query = query.where(c.revoked_at.is_not(None))
    elif status == "expired":
        query = query.where(and_(c.revoked_at.is_(None), c.not_after <= now))
    elif status == "superseded":
        query = query.where(and_(unexpired_and_unrevoked, c.superseded_by.is_not(None)))
    elif status == "active":
        query = query.where(and_(unexpired_and_unrevoked, c.superseded_by.is_(None)))
    elif status is not None:
        raise ValueError(f"unknown status {status!r}")
    if expiring_within is not None:
        query = query.where(and_(certificates.c.not_after > now, certificates.c.not_after <= now + expiring_within))
    if limit:
        query = query.limit(limit)
    return conn.execute(query).all()


def mark_revoked(conn: Connection, certificate_id: int, *, at: datetime, reason: str) -> bool:
    """Revoke the certificate unless it already is; False when it was (a concurrent revoke won)."""
    changed = conn.execute(
        update(certificates)
        .where(and_(certificates.c.id == certificate_id, certificates.c.revoked_at.is_(None)))
        .values(revoked_at=at, revocation_reason=reason)
    ).rowcount
    return bool(changed)


def revoked_unexpired(conn: Connection, issuer_id: int, now: datetime) -> Sequence[Row[str, datetime, str]]:
    """(serial, revoked_at, revocation_reason) of the issuer's revoked certificates still valid at ``now``."""
    return conn.execute(
        select(certificates.c.serial, certificates.c.revoked_at, certificates.c.revocation_reason)
        .where(and_(certificates.c.issuer_id == issuer_id, certificates.c.revoked_at.is_not(None),
                    certificates.c.not_after > now))
    ).all()

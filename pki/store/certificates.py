"""The certificate inventory: every certificate issued, its revocation and its successor."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, String, and_, bindparam, cast, delete, func, insert, or_, select, update
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
    if status in ("active", "superseded") or expiring_within is not None:
        # The unexpired rows through ix_certificates_not_after: few against a long-running
        # inventory (mostly expired), which a scan in id order would read all of to find them.
        window = c.not_after > now
        if expiring_within is not None:
            window = and_(window, c.not_after <= now + expiring_within)
        query = query.where(c.id.in_(select(c.id).where(window)))
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


def _revoked_unexpired_query(issuer_id: int, now: datetime) -> Select[str, datetime, str]:
    return (select(certificates.c.serial, certificates.c.revoked_at, certificates.c.revocation_reason)
            .where(and_(certificates.c.issuer_id == issuer_id, certificates.c.revoked_at.is_not(None),
                        certificates.c.not_after > now)))


def revoked_unexpired(conn: Connection, issuer_id: int, now: datetime) -> Sequence[Row[str, datetime, str]]:
    """(serial, revoked_at, revocation_reason) of the issuer's revoked certificates still valid at ``now``."""
    return conn.execute(_revoked_unexpired_query(issuer_id, now)).all()


def insert_many(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Rows given whole (every column but ``id``), in one executemany: filling an inventory in
    bulk (``scripts/seed-inventory``), not the issuance path."""
    conn.execute(insert(certificates), list(rows))


def count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(certificates)).scalar_one())


def expired_before(conn: Connection, cutoff: datetime, *, after_id: int = 0,
                   limit: int = 10_000) -> Sequence[Row[Any]]:
    """Certificates whose notAfter is before ``cutoff``, in id order from ``after_id`` on (at most
    ``limit``): the next batch a prune archives and deletes."""
    return conn.execute(
        select(certificates).where(and_(certificates.c.not_after < cutoff, certificates.c.id > after_id))
        .order_by(certificates.c.id).limit(limit)
    ).all()


def count_expired_before(conn: Connection, cutoff: datetime) -> int:
    """How many certificates a prune at ``cutoff`` would delete (``ix_certificates_not_after``)."""
    return int(conn.execute(select(func.count()).select_from(certificates)
                            .where(certificates.c.not_after < cutoff)).scalar_one())


def delete_ids(conn: Connection, ids: Sequence[int], cutoff: datetime) -> int:
    """Delete these certificates, each only if still expired before ``cutoff``; the count deleted."""
    return int(conn.execute(delete(certificates).where(
        and_(certificates.c.id.in_(list(ids)), certificates.c.not_after < cutoff))).rowcount)


def plan_of_revoked_unexpired(conn: Connection, issuer_id: int, now: datetime) -> str:
    """The database's plan for ``revoked_unexpired`` (benchmarks check it reads the partial index
    ``ix_certificates_revoked``, so a CRL costs what the revoked certificates do, not the inventory)."""
    compiled = _revoked_unexpired_query(issuer_id, now).compile(dialect=conn.dialect)
    prefix = "EXPLAIN QUERY PLAN " if conn.dialect.name == "sqlite" else "EXPLAIN "
    rows = conn.exec_driver_sql(prefix + str(compiled), _driver_params(conn, compiled)).all()
    return "\n".join(str(row[-1]) for row in rows)


def _driver_params(conn: Connection, compiled: Any) -> Any:
    processors = compiled._bind_processors  # the column types' conversions, as execute would apply
    values = {k: (processors[k](v) if k in processors else v) for k, v in compiled.params.items()}
    if compiled.positiontup:
        return tuple(values[name] for name in compiled.positiontup)
    return values


def database_size(conn: Connection) -> int:
    """Bytes the database takes: SQLite's pages (the WAL aside), PostgreSQL's ``pg_database_size``."""
    if conn.dialect.name == "sqlite":
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
        return int(pages) * int(conn.exec_driver_sql("PRAGMA page_size").scalar_one())
    return int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one())


def refresh_statistics(conn: Connection) -> None:
    """PostgreSQL: ANALYZE, as its autovacuum does after a bulk load, so that the planner knows
    how many rows are expired. SQLite: nothing (rapki's homes run without ``sqlite_stat1``, and
    its queries are written to plan well without it)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ANALYZE")

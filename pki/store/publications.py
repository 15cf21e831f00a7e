"""CRLs published to Roles Anywhere trust anchors (one row per publication), and the lock that
lets one publisher run at a time across hosts on PostgreSQL."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.engine import Connection, Engine, Row

from pki.store.schema import crl_publications


def last(conn: Connection, anchor_arn: str, issuer_id: int) -> Row[Any] | None:
    """The issuer's latest publication to the anchor."""
    return conn.execute(
        select(crl_publications)
        .where(crl_publications.c.trust_anchor_arn == anchor_arn, crl_publications.c.issuer_id == issuer_id)
        .order_by(crl_publications.c.id.desc()).limit(1)
    ).first()


def issuer_by_crl_id(conn: Connection, anchor_arn: str) -> dict[str, int]:
    """crlId -> issuer id, of every CRL ever published to the anchor."""
    return {r.crl_id: r.issuer_id for r in conn.execute(
        select(crl_publications.c.crl_id, crl_publications.c.issuer_id)
        .where(crl_publications.c.trust_anchor_arn == anchor_arn))}


def add(conn: Connection, *, issuer_id: int, anchor_arn: str, crl_id: str, crl_arn: str | None, crl_name: str,
        crl_number: int, sha256: str, size: int, published_at: datetime, audit_seq: int | None = None,
        audit_hash: str | None = None) -> None:
    conn.execute(insert(crl_publications).values(
        issuer_id=issuer_id, trust_anchor_arn=anchor_arn, crl_id=crl_id, crl_arn=crl_arn, crl_name=crl_name,
        crl_number=crl_number, sha256=sha256, size=size, published_at=published_at, audit_seq=audit_seq,
        audit_hash=audit_hash,
    ))


def audit_heads(conn: Connection) -> Sequence[Row[int, str, datetime]]:
    """(audit_seq, audit_hash, published_at) of every publication that recorded the audit
    chain's head, newest first."""
    p = crl_publications.c
    return conn.execute(select(p.audit_seq, p.audit_hash, p.published_at).where(p.audit_seq.is_not(None))
                        .order_by(p.id.desc())).all()


@contextlib.contextmanager
def advisory_lock(engine: Engine, name: str, timeout: float) -> Iterator[None]:
    """PostgreSQL: hold the session advisory lock ``name`` for the block, on a connection of its
    own (it goes with the connection if the process dies). Waits at most ``timeout`` seconds,
    then raises TimeoutError."""
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    with engine.connect() as raw:
        conn = raw.execution_options(isolation_level="AUTOCOMMIT")  # no transaction left idle
        # lock_timeout 0 would mean "wait forever" to PostgreSQL: at least 1 ms keeps the wait bounded.
        conn.execute(text(f"SET lock_timeout = '{max(1, int(timeout * 1000))}ms'"))
        try:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        except Exception as exc:  # lock_timeout: "canceling statement due to lock timeout"
            raise TimeoutError(f"the lock {name!r} was held for over {timeout:.0f} s") from exc
        finally:
            conn.execute(text("RESET lock_timeout"))
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})

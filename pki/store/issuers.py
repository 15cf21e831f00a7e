"""Issuing CAs: their certificates and key references; one of them active (the one that issues)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection, Row

from pki.store.schema import issuers


def count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(issuers)).scalar() or 0)


def all_rows(conn: Connection) -> Sequence[Row[Any]]:
    """Every issuer, oldest first."""
    return conn.execute(select(issuers).order_by(issuers.c.id)).all()


def add(conn: Connection, *, name: str, subject: str, ski: str, key_type: str, key_ref: str, der: bytes,
        not_before: datetime, not_after: datetime, created_at: datetime, active: bool) -> int:
    """Add an issuer; when ``active``, as the active one (every other becomes inactive). Its id."""
    if active:
        conn.execute(update(issuers).values(active=False))
    return int(conn.execute(insert(issuers).values(
        name=name, subject=subject, ski=ski, key_type=key_type, key_ref=key_ref, der=der,
        not_before=not_before, not_after=not_after, active=active, created_at=created_at,
    ).returning(issuers.c.id)).scalar_one())


def activate(conn: Connection, issuer_id: int) -> None:
    """Make this issuer the active one, every other inactive (one statement: never none or two)."""
    conn.execute(update(issuers).values(active=issuers.c.id == issuer_id))

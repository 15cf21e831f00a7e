"""The audit log: one row per change, appended (never updated), read newest first."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection, Row

from pki.store.schema import audit_log
from pki.store.statements import PreparedInsert

# Built once: values go in as parameters, so SQLAlchemy reuses the compiled form.
_INSERT = insert(audit_log)
INSERT_ROW = PreparedInsert(audit_log)  # the issuance path's audit row, written with the certificate


def add(conn: Connection, *, at: datetime, actor: str, action: str, target: str,
        details: dict[str, Any] | None) -> None:
    conn.execute(_INSERT, {"at": at, "actor": actor, "action": action, "target": target, "details": details})


def newest(conn: Connection, limit: int, *, action: str | None = None, actor: str | None = None,
           target: str | None = None, since: datetime | None = None) -> Sequence[Row[Any]]:
    """At most ``limit`` rows, newest first. ``action``: exact, or a prefix when it ends in a dot;
    ``actor``: a part of it; ``target``: exact; ``since``: not older."""
    query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if action:
        query = query.where(audit_log.c.action.startswith(action, autoescape=True) if action.endswith(".")
                            else audit_log.c.action == action)
    if actor:
        query = query.where(audit_log.c.actor.contains(actor, autoescape=True))
    if target:
        query = query.where(audit_log.c.target == target)
    if since is not None:
        query = query.where(audit_log.c.at >= since)
    return conn.execute(query).all()

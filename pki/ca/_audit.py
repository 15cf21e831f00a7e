"""The audit log of ``CertificateAuthority``: who changed what, recorded with the change itself."""

from __future__ import annotations

import functools
import getpass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection

from pki.errors import InvalidInput
from pki.store import Database
from pki.store import audit as audit_rows
from pki.store.times import utc

DEFAULT_ACTOR = "cli"


@functools.cache
def local_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no passwd entry in some containers
        return DEFAULT_ACTOR


class AuditTrail:
    """Writing and reading the audit log. The base of every concern: each change they make is
    audited in its own transaction (``audit_in``)."""

    db: Database

    def audit(self, actor: str | None, action: str, target: str, details: dict[str, Any] | None = None) -> None:
        with self.db.engine.begin() as conn:
            self.audit_in(conn, actor, action, target, details)

    @staticmethod
    def audit_in(conn: Connection, actor: str | None, action: str, target: str,
                 details: dict[str, Any] | None) -> None:
        """An audit row in the transaction of ``conn``: written if, and only if, the change is."""
        audit_rows.add(conn, at=datetime.now(UTC), actor=actor or local_actor(), action=action, target=target,
                       details=details)

    def audit_entries(self, limit: int = 100, *, action: str | None = None, actor: str | None = None,
                      target: str | None = None, since: datetime | None = None) -> list[dict[str, Any]]:
        """The newest audit entries first. ``action``: exact (``certificate.issue``) or a prefix
        ending in a dot (``certificate.``); ``actor``: a part of it (``enrollment-token:``);
        ``target``: exact (a serial, token id, issuer or profile name); ``since``: not older."""
        if not 1 <= limit <= 100_000:
            raise InvalidInput("the audit limit must be between 1 and 100000")
        with self.db.engine.connect() as conn:
            rows = audit_rows.newest(conn, limit, action=action, actor=actor, target=target, since=since)
        return [{"at": utc(r.at).isoformat(), "actor": r.actor, "action": r.action, "target": r.target,
                 "details": r.details} for r in rows]

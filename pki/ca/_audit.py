"""The audit log of ``CertificateAuthority``: who changed what, recorded with the change itself."""

from __future__ import annotations

import functools
import getpass
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection

from pki.auditchain import ChainHead, ChainReport, canonical_time, verify
from pki.errors import InvalidInput
from pki.store import Database
from pki.store import audit as audit_rows
from pki.store import publications as publication_rows
from pki.store.times import utc

DEFAULT_ACTOR = "cli"
EXPECTED = "given with --expect-head"  # where a head the caller gives ``verify_audit_log`` comes from


@functools.cache
def local_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no passwd entry in some containers
        return DEFAULT_ACTOR


@dataclass(frozen=True)
class AnchoredHead:
    """A chain head recorded outside the log (a CRL publication), and whether the log holds it."""

    head: ChainHead
    source: str  # e.g. "recorded by the CRL publication of 2025-01-02T03:04:05+00:00"
    found: bool


@dataclass
class AuditVerification:
    """``CertificateAuthority.verify_audit_log``: the chain checked, then each head recorded
    elsewhere (CRL publications, ``expect``) looked up in it."""

    report: ChainReport
    head_record: ChainHead | None  # the database's head row
    anchors: list[AnchoredHead] = field(default_factory=list)  # the newest publication's, and ``expect``
    problems: list[str] = field(default_factory=list)  # the chain's first problem, then missing heads

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "entries": self.report.entries, "first": self.report.first,
            "head": str(self.report.head) if self.report.head else None,
            "bad_entry": self.report.bad_entry, "problems": self.problems,
            "anchors": [{"head": str(a.head), "source": a.source, "found": a.found} for a in self.anchors],
        }


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

    def verify_audit_log(self, *, expect: Sequence[ChainHead] = ()) -> AuditVerification:
        """Check the whole audit chain against itself and against its head row, then look up
        the heads recorded elsewhere: every CRL publication's (the newest is reported) and
        ``expect`` (heads the caller kept, e.g. from a SIEM). A head not in the chain means the
        log was rewritten (or ``expect`` is from another CA)."""
        with self.db.engine.connect() as conn:
            head_record = audit_rows.head(conn)
            published = publication_rows.audit_heads(conn)
            anchored = [(ChainHead(int(r.audit_seq), r.audit_hash),
                         f"recorded by the CRL publication of {utc(r.published_at).isoformat()}") for r in published]
            anchored += [(h, EXPECTED) for h in expect]
            watch = {h.seq for h, _source in anchored}
            report = verify(audit_rows.chain(conn), head=head_record, watch=watch)
        result = AuditVerification(report, head_record)
        if report.problem:
            result.problems.append(report.problem)
        for index, (head, source) in enumerate(anchored):
            found = report.seen.get(head.seq) == head.hash
            if not found and report.ok:  # past a broken entry nothing is looked up
                held = report.seen.get(head.seq)
                why = (f"entry {head.seq} has hash {held[:16]}..." if held
                       else f"the log ends at entry {report.head.seq if report.head else 0}")
                result.problems.append(f"the chain does not contain the head {head} {source} ({why})")
            if index == 0 or source == EXPECTED or not found:  # the newest publication's, and any that fails
                result.anchors.append(AnchoredHead(head, source, found))
        return result

    def audit_export(self, *, after: int = 0, since: datetime | None = None) -> Iterator[dict[str, Any]]:
        """Entries oldest first with the chain fields (``pki.auditchain.CHAIN_FIELDS``, ``at`` as
        hashed): ``after``: only entries numbered higher; ``since``: only entries this recent."""
        if after < 0:
            raise InvalidInput("--after-id must be 0 or more")
        with self.db.engine.connect() as conn:
            for entry in audit_rows.chain(conn, after=after, since=since):
                entry["at"] = canonical_time(entry["at"])
                yield entry

    def audit_head(self) -> ChainHead | None:
        """The newest audit entry's number and hash (None before the first entry)."""
        with self.db.engine.connect() as conn:
            return audit_rows.head(conn)

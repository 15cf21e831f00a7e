"""The audit log: one row per change, appended to a hash chain (never updated), read newest first.

How an entry joins the chain (the hashing itself is ``pki.auditchain``). The content digest of
the entry is computed before the transaction; then, in the writer's transaction:

1. ``UPDATE audit_chain SET seq = seq + 1, prev_hash = hash, hash = sha256(hash, seq + 1,
   digest) WHERE id = 1``: the one head row is advanced, its new hash computed by the database
   from the old one;
2. ``INSERT INTO audit_log ... SELECT seq, prev_hash, hash FROM <the head just advanced>``.

Why a head row, locked by the update, rather than reading the newest entry: it is the one place
every writer must pass, so concurrent writers form ONE linear chain on either database.
PostgreSQL: the update takes the row's lock, held until commit; a concurrent writer waits on it
and then (READ COMMITTED) re-reads the row as committed, so it chains on the entry just written,
from any replica; no advisory lock or serialisable isolation, and no retry. SQLite: the update
is a write, so it runs under SQLite's single writer lock (and ``Database.write``'s writer lock)
and never starts from a stale snapshot. The lock is held from the update to the commit, so
writers take it last: the issuance path appends its audit entry as its final statement.

Cost: no round trip to read the previous hash. On PostgreSQL both steps are one statement (the
update as a data-modifying CTE); SQLite, in process, runs them as two. The database computes
the small final hash (PostgreSQL's ``sha256``; on SQLite a function ``Database`` registers on
its connections), which is what lets the writer skip reading the previous hash first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import Text, bindparam, cast, func, insert, literal_column, select, update
from sqlalchemy.engine import Connection, Dialect, Row
from sqlalchemy.sql.expression import ColumnElement

from pki.auditchain import ChainHead, content_digest, entry_hash
from pki.store.schema import audit_chain, audit_log
from pki.store.statements import BoundInsert, PreparedStatement

SQLITE_SHA256 = "rapki_sha256_hex"  # registered on every SQLite connection (``Database``)

_L = audit_log.c
_H = audit_chain.c
_CONTENT = ("at", "actor", "action", "target", "details")
_PARAMS: dict[str, Any] = {"at": _L.at, "actor": _L.actor, "action": _L.action, "target": _L.target,
                           "details": _L.details, "digest": _L.hash}


def sqlite_sha256_hex(text: str | None) -> str | None:
    """SQLite's ``rapki_sha256_hex(text)``: SHA-256 (hex) of the UTF-8 text."""
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


def _sha256_hex(dialect: str, value: ColumnElement[Any]) -> ColumnElement[Any]:
    if dialect == "sqlite":
        return getattr(func, SQLITE_SHA256)(value)
    if dialect == "postgresql":  # PostgreSQL 11 or later
        return func.encode(func.sha256(func.convert_to(value, literal_column("'UTF8'"))), literal_column("'hex'"))
    raise NotImplementedError(f"the audit chain supports SQLite and PostgreSQL, not {dialect}")


def _advance(dialect: str) -> Any:
    """Step 1: the head row moved on by one entry (``pki.auditchain.link_text``, in SQL)."""
    next_seq = _H.seq + literal_column("1")
    text = (_H.hash.concat(literal_column("' '")).concat(cast(next_seq, Text)).concat(literal_column("' '"))
            .concat(bindparam("digest", type_=_L.hash.type)))
    return (update(audit_chain).where(_H.id == literal_column("1"))
            .values(seq=next_seq, prev_hash=_H.hash, hash=_sha256_hex(dialect, text)))


def _copy_from(head: Any) -> Any:
    """Step 2: the entry, numbered and hashed as ``head`` (the advanced head row) says."""
    content = [bindparam(name, type_=_PARAMS[name].type) for name in _CONTENT]
    return insert(audit_log).from_select(
        ["id", *_CONTENT, "prev_hash", "hash"],
        select(head.c.seq, *content, head.c.prev_hash, head.c.hash),
    )


class _ChainStatements:
    """The append statements of one dialect, Core (``steps``) and prepared (``prepared``)."""

    def __init__(self, dialect: Dialect) -> None:
        advance = _advance(dialect.name)
        if dialect.name == "postgresql":  # one statement: the update as a data-modifying CTE
            head = advance.returning(_H.seq, _H.prev_hash, _H.hash).cte("head")
            self.steps: tuple[Any, ...] = (_copy_from(head),)
        else:
            self.steps = (advance, _copy_from(select(_H.seq, _H.prev_hash, _H.hash)
                                              .where(_H.id == literal_column("1")).subquery("head")))
        self.prepared = tuple(PreparedStatement(s, {name: _PARAMS[name] for name in s.compile(dialect=dialect).binds})
                              for s in self.steps)


_STATEMENTS: dict[str, _ChainStatements] = {}


def _statements(dialect: Dialect) -> _ChainStatements:
    found = _STATEMENTS.get(dialect.name)
    if found is None:
        found = _STATEMENTS[dialect.name] = _ChainStatements(dialect)
    return found


def _values(at: datetime, actor: str, action: str, target: str, details: Any) -> dict[str, Any]:
    at = at.astimezone(UTC)  # SQLite keeps the wall time: store it in the zone it is hashed in
    return {"at": at, "actor": actor, "action": action, "target": target, "details": details,
            "digest": content_digest(at, actor, action, target, details)}


class PreparedEntry(NamedTuple):
    """An audit entry converted for the driver before the transaction (``prepare``): the
    statements that append it, run in order with ``Transaction.insert``."""

    statements: tuple[BoundInsert, ...]


def prepare(dialect: Dialect, *, at: datetime, actor: str, action: str, target: str,
            details: dict[str, Any] | None) -> PreparedEntry:
    """The issuance path's entry: digest and values converted outside the writer lock."""
    values = _values(at, actor, action, target, details)
    return PreparedEntry(tuple(s.bind(dialect, values) for s in _statements(dialect).prepared))


def add(conn: Connection, *, at: datetime, actor: str, action: str, target: str,
        details: dict[str, Any] | None) -> None:
    """Append an entry in the transaction of ``conn``."""
    values = _values(at, actor, action, target, details)
    for step in _statements(conn.dialect).steps:
        conn.execute(step, values)


def append_many(conn: Connection, entries: Sequence[tuple[datetime, str, str, str, dict[str, Any] | None]]) -> None:
    """Append ``entries`` ((at, actor, action, target, details), oldest first) in one
    executemany, chained in Python from the head row, which is locked first and advanced once:
    filling a log in bulk (``scripts/seed-inventory``). The chain is the one ``add`` makes."""
    row = conn.execute(select(_H.seq, _H.hash).where(_H.id == 1).with_for_update()).one()
    seq, prev = int(row.seq), row.hash
    rows = []
    for entry in entries:
        values = _values(*entry)
        seq += 1
        digest = entry_hash(prev, seq, values.pop("digest"))
        rows.append({**values, "id": seq, "prev_hash": prev, "hash": digest})
        prev = digest
    if rows:
        conn.execute(insert(audit_log), rows)
        conn.execute(update(audit_chain).where(_H.id == 1).values(
            seq=seq, prev_hash=rows[-1]["prev_hash"], hash=prev))


def head(conn: Connection) -> ChainHead | None:
    """The chain's head row (None before the first entry)."""
    row = conn.execute(select(_H.seq, _H.hash).where(_H.id == 1)).first()
    return None if row is None or row.seq == 0 else ChainHead(int(row.seq), row.hash)


def chain(conn: Connection, *, after: int = 0, since: datetime | None = None,
          batch: int = 5000) -> Iterator[dict[str, Any]]:
    """Entries oldest first with the chain fields (``pki.auditchain.CHAIN_FIELDS``), read in
    batches of ``batch`` (a log of any length in bounded memory). ``after``: only entries with
    a higher number; ``since``: only entries this recent."""
    columns = (_L.id, _L.at, _L.actor, _L.action, _L.target, _L.details, _L.prev_hash, _L.hash)
    while True:
        query = select(*columns).where(_L.id > after).order_by(_L.id).limit(batch)
        if since is not None:
            query = query.where(_L.at >= since)
        rows = conn.execute(query).all()
        for seq, at, actor, action, target, details, prev_hash, digest in rows:
            yield {"seq": seq, "at": at, "actor": actor, "action": action, "target": target, "details": details,
                   "prev_hash": prev_hash, "hash": digest}
        if len(rows) < batch:
            return
        after = rows[-1][0]


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

"""The API's rate-limit counters and seen request signatures in the CA database (PostgreSQL), so
that every replica of ``rapki serve`` counts in the same rows.

Each function runs on a write transaction of ``Database.write`` (``pki.store.statements``); the
statements are PostgreSQL's (``ON CONFLICT``, ``SKIP LOCKED``): a SQLite home keeps these in a
file of its own (``service.api.state``).

- ``count_hit``: one upsert per key and window, atomic under concurrent replicas: the row lock
  taken by ``ON CONFLICT DO UPDATE`` queues concurrent hits of one key, and ``RETURNING`` gives
  each the count it made.
- ``first_use``: ``INSERT ... ON CONFLICT DO NOTHING``; one row inserted means first seen.
- ``drop_expired``: at most ``EXPIRED_BATCH`` finished rows of each table, skipping rows another
  transaction holds, so that housekeeping never waits and never takes long.
"""

from __future__ import annotations

from sqlalchemy import Integer, bindparam, delete, literal_column, select, tuple_
from sqlalchemy.dialects.postgresql import insert

from pki.store.schema import rate_counters, seen_signatures
from pki.store.statements import PreparedStatement, Transaction

EXPIRED_BATCH = 500

_R = rate_counters.c
_S = seen_signatures.c

COUNT_HIT = PreparedStatement(
    insert(rate_counters)
    .values(key=bindparam("key"), window=bindparam("window"), count=literal_column("1"),
            expires=bindparam("expires"))
    .on_conflict_do_update(index_elements=[_R.key, _R.window], set_={"count": _R.count + literal_column("1")})
    .returning(_R.count),
    {"key": _R.key, "window": _R.window, "expires": _R.expires}, (_R.count,),
)
FIRST_USE = PreparedStatement(
    insert(seen_signatures).values(digest=bindparam("digest"), expires=bindparam("expires"))
    .on_conflict_do_nothing(index_elements=[_S.digest]),
    {"digest": _S.digest, "expires": _S.expires},
)
_BATCH = literal_column(str(EXPIRED_BATCH), Integer)
DROP_EXPIRED_COUNTERS = PreparedStatement(
    delete(rate_counters).where(tuple_(_R.key, _R.window).in_(
        select(_R.key, _R.window).where(_R.expires < bindparam("now")).limit(_BATCH)
        .with_for_update(skip_locked=True))),
    {"now": _R.expires},
)
DROP_EXPIRED_SIGNATURES = PreparedStatement(
    delete(seen_signatures).where(_S.digest.in_(
        select(_S.digest).where(_S.expires < bindparam("now")).limit(_BATCH).with_for_update(skip_locked=True))),
    {"now": _S.expires},
)


def count_hit(tx: Transaction, key: str, window: int, expires: int) -> int:
    """One more request for ``key`` in ``window`` (which ends at Unix time ``expires``); the
    window's count, this request included. The row stays locked until ``tx`` ends."""
    count: int = tx.run(COUNT_HIT, {"key": key, "window": window, "expires": expires})[0]
    return count


def first_use(tx: Transaction, digest: str, expires: int) -> bool:
    """Record ``digest`` as seen until Unix time ``expires``; False when it was recorded before."""
    return bool(tx.run(FIRST_USE, {"digest": digest, "expires": expires}))


def drop_expired(tx: Transaction, now: int) -> None:
    """Delete up to ``EXPIRED_BATCH`` counters and seen signatures that expired before ``now``."""
    tx.run(DROP_EXPIRED_COUNTERS, {"now": now})
    tx.run(DROP_EXPIRED_SIGNATURES, {"now": now})

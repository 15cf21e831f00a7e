"""Enrollment and operator tokens (stored hashed, never in clear).

An enrollment token is looked up and redeemed on every enrollment: those two statements are
prepared (``pki.store.statements``); redemption runs in the transaction that records the
certificate (``Transaction.run(REDEEM, ...)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, insert, literal_column, select, update
from sqlalchemy.engine import Connection, Row

from pki.store.schema import enrollment_tokens, operator_tokens
from pki.store.statements import PreparedStatement

_T = enrollment_tokens.c
# The columns of an enrollment token, in this order; literals are inlined so that only these binds exist.
ENROLLMENT_COLUMNS = (_T.id, _T.token_hash, _T.profile, _T.cn, _T.cn_is_pattern, _T.uses_left, _T.max_uses,
                      _T.expires_at, _T.created_at, _T.created_by, _T.revoked_at, _T.last_used_at)
SELECT_ENROLLMENT = PreparedStatement(select(*ENROLLMENT_COLUMNS).where(_T.id == bindparam("token_id")),
                                      {"token_id": _T.id}, ENROLLMENT_COLUMNS)
# One use taken, only from a token that matches, has uses left, has not expired and is not revoked:
# the database serialises concurrent redemptions of one row, so a token never gives more uses than it has.
REDEEM = PreparedStatement(
    update(enrollment_tokens)
    .where(and_(_T.id == bindparam("token_id"), _T.token_hash == bindparam("digest"),
                _T.uses_left > literal_column("0"), _T.expires_at > bindparam("now"), _T.revoked_at.is_(None)))
    .values(uses_left=_T.uses_left - literal_column("1"), last_used_at=bindparam("used_at")),
    {"token_id": _T.id, "digest": _T.token_hash, "now": _T.expires_at, "used_at": _T.last_used_at},
)


# --- enrollment tokens ----------------------------------------------------------------------------
def add_enrollment(conn: Connection, values: dict[str, Any]) -> None:
    """``values``: every column of ``enrollment_tokens``."""
    conn.execute(insert(enrollment_tokens).values(**values))


def enrollment(conn: Connection, token_id: str) -> Row[Any] | None:
    return conn.execute(select(enrollment_tokens).where(_T.id == token_id)).first()


def enrollments(conn: Connection) -> Sequence[Row[Any]]:
    """Every enrollment token, oldest first."""
    return conn.execute(select(enrollment_tokens).order_by(_T.created_at)).all()


def revoke_enrollment(conn: Connection, token_id: str, at: datetime) -> bool:
    """False when there is no such token or it was revoked already."""
    return bool(conn.execute(
        update(enrollment_tokens).where(and_(_T.id == token_id, _T.revoked_at.is_(None))).values(revoked_at=at)
    ).rowcount)


# --- operator tokens ------------------------------------------------------------------------------
def add_operator(conn: Connection, values: dict[str, Any]) -> None:
    """``values``: every column of ``operator_tokens``."""
    conn.execute(insert(operator_tokens).values(**values))


def operator(conn: Connection, token_id: str) -> Row[Any] | None:
    return conn.execute(select(operator_tokens).where(operator_tokens.c.id == token_id)).first()


def operators(conn: Connection) -> Sequence[Row[Any]]:
    """Every operator token, oldest first."""
    return conn.execute(select(operator_tokens).order_by(operator_tokens.c.created_at)).all()


def revoke_operator(conn: Connection, token_id: str, at: datetime) -> None:
    conn.execute(update(operator_tokens).where(operator_tokens.c.id == token_id).values(revoked_at=at))

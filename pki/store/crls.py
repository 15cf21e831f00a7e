"""Each issuer's CRL state: its last CRLNumber and the last CRL built (one row per issuer)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, Row

from pki.store.schema import crl_state


def start(conn: Connection, issuer_id: int) -> None:
    """The state of a new issuer: no CRL yet, CRLNumber 0."""
    conn.execute(insert(crl_state).values(issuer_id=issuer_id, crl_number=0, entries=0))


def take_number(conn: Connection, issuer_id: int) -> int:
    """The issuer's next CRLNumber, taken: the row stays locked until the transaction ends, so
    concurrent builders get a number each, in turn."""
    return int(conn.execute(
        update(crl_state).where(crl_state.c.issuer_id == issuer_id)
        .values(crl_number=crl_state.c.crl_number + 1).returning(crl_state.c.crl_number)
    ).scalar_one())


def last_number(conn: Connection, issuer_id: int) -> int:
    return int(conn.execute(select(crl_state.c.crl_number).where(crl_state.c.issuer_id == issuer_id)).scalar_one())


def save(conn: Connection, issuer_id: int, *, this_update: datetime, next_update: datetime, entries: int,
         der: bytes) -> None:
    """Record the CRL just built as the issuer's last."""
    conn.execute(update(crl_state).where(crl_state.c.issuer_id == issuer_id).values(
        this_update=this_update, next_update=next_update, entries=entries, der=der))


def state(conn: Connection, issuer_id: int) -> Row[Any]:
    """crl_number, this_update, next_update, entries and der (None before the first CRL)."""
    return conn.execute(select(crl_state).where(crl_state.c.issuer_id == issuer_id)).one()

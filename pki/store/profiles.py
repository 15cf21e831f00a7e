"""Certificate profiles, stored as their ``Profile.to_dict()`` spec under their name."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from pki.store.schema import profiles

# Built once (read on every issuance whose profile is not cached): the name goes in as a parameter.
_SELECT_SPEC = select(profiles.c.spec).where(profiles.c.name == bindparam("name"))


def spec_of(conn: Connection, name: str) -> dict[str, Any] | None:
    """The spec of the profile ``name``, None when there is none."""
    found: dict[str, Any] | None = conn.execute(_SELECT_SPEC, {"name": name}).scalar()
    return found


def exists(conn: Connection, name: str) -> bool:
    return conn.execute(select(profiles.c.name).where(profiles.c.name == name)).first() is not None


def add(conn: Connection, name: str, spec: dict[str, Any], now: datetime) -> None:
    conn.execute(insert(profiles).values(name=name, spec=spec, created_at=now, updated_at=now))


def replace(conn: Connection, name: str, spec: dict[str, Any], now: datetime) -> None:
    conn.execute(update(profiles).where(profiles.c.name == name).values(spec=spec, updated_at=now))


def all_specs(conn: Connection) -> list[dict[str, Any]]:
    """Every profile's spec, by name."""
    return list(conn.execute(select(profiles.c.spec).order_by(profiles.c.name)).scalars().all())


def remove(conn: Connection, name: str) -> None:
    conn.execute(delete(profiles).where(profiles.c.name == name))

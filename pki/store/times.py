"""Times read back from the database: SQLite keeps no zone, so its datetimes come back naive.
Every time rapki stores is UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)

"""Engine creation, migrations on start, and the pragmas that make SQLite a fit default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from pki.errors import InvalidInput, Unavailable

MIGRATIONS = Path(__file__).parent / "migrations"
HEAD_REVISION = "0002"  # bump with every new revision in migrations/versions


class Database:
    """One engine per process, migrated to the head revision when opened."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "normal") -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        try:
            self.engine: Engine = self._create_engine(url, sqlite_synchronous)
        except Exception as exc:  # bad URL, missing driver
            raise InvalidInput(f"cannot use the database URL: {exc}") from exc

    @staticmethod
    def _create_engine(url: str, synchronous: str) -> Engine:
        if not url.startswith("sqlite"):
            return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers run beside the writer; busy_timeout makes writers queue instead of
            # failing; synchronous=NORMAL in WAL never corrupts, but a power loss (not a process
            # crash) may drop the last transactions. See README, "Durability".
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine

    def migrate(self) -> None:
        """Apply alembic migrations up to head; cheap when already there (one query)."""
        try:
            if self.current_revision() == HEAD_REVISION:
                return
        except OperationalError as exc:
            raise Unavailable(f"the database is unreachable: {exc.orig}") from exc
        from alembic import command
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError as exc:
            raise Unavailable(f"the database is unreachable: {exc.orig}") from exc

    def dispose(self) -> None:
        self.engine.dispose()

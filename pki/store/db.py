"""Engine creation, migrations on start, and the pragmas that make SQLite a fit default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Integer, Table, create_engine, event, insert, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

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
        self._prepared: dict[str, PreparedInsert] = {}

    def prepared_insert(self, table: Table) -> PreparedInsert:
        if table.name not in self._prepared:
            self._prepared[table.name] = PreparedInsert(self.engine, table)
        return self._prepared[table.name]

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


class PreparedInsert:
    """An INSERT compiled once for an engine's dialect and run on the DBAPI cursor of a SQLAlchemy
    connection, inside that connection's transaction.

    The issuance path writes two rows per certificate; SQLAlchemy's per-statement execution context
    costs more than SQLite's own insert there. Values still go through each column type's public
    ``bind_processor``, so rows read back through SQLAlchemy exactly as if it had written them.
    """

    def __init__(self, engine: Engine, table: Table) -> None:
        dialect = engine.dialect
        columns = [c for c in table.columns if not (c.primary_key and c.autoincrement in (True, "auto")
                                                    and isinstance(c.type, Integer))]
        compiled = insert(table).compile(dialect=dialect, column_keys=[c.key for c in columns])
        self.sql = compiled.string
        self.positional = list(compiled.positiontup) if compiled.positiontup else None
        self.processors = {c.key: c.type.dialect_impl(dialect).bind_processor(dialect) for c in columns}
        self.keys = frozenset(self.processors)
        self.dbapi_error: type[Exception] = dialect.loaded_dbapi.Error

    def execute(self, conn: Connection, values: dict[str, Any]) -> None:
        """Insert one row. Driver errors come out as SQLAlchemy's (``IntegrityError``,
        ``OperationalError``...), exactly as from ``Connection.execute``, parameters hidden."""
        if values.keys() != self.keys:
            raise ValueError(f"columns differ: {sorted(self.keys ^ values.keys())}")
        params = {k: (p(v) if (p := self.processors[k]) is not None else v) for k, v in values.items()}
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self.sql, tuple(params[n] for n in self.positional) if self.positional else params)
        except self.dbapi_error as exc:
            raise DBAPIError.instance(self.sql, None, exc, self.dbapi_error, hide_parameters=True) from exc
        finally:
            cursor.close()

"""Engine creation, migrations on start, the pragmas that make SQLite a fit default, and the
write transactions of the issuance path (``Database.write``)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Literal

import orjson
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool, PoolProxiedConnection

from pki.errors import InvalidInput, Unavailable
from pki.store.audit import SQLITE_SHA256, sqlite_sha256_hex
from pki.store.statements import PreparedStatement, Transaction, wrap_dbapi_error
from pki.store.writelock import WriterLock

MIGRATIONS = Path(__file__).parent / "migrations"

# This process's id, refreshed in a forked child: getpid() is a system call, and the held
# connections check it on every transaction.
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))
HEAD_REVISION = "0003"  # bump with every new revision in migrations/versions


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# JSON columns (SANs, profile specs, audit details) through orjson: the standard library's encoder
# builds a new C encoder for every value, a fiftieth of an issuance. Same JSON, read back alike.
_JSON: dict[str, Any] = {"json_serializer": _json_text, "json_deserializer": orjson.loads}


class WriteTransaction(Transaction):
    """``Database.write``'s transaction: takes the writer lock (if any) on entry; on exit commits,
    or rolls back and re-raises (a driver error as SQLAlchemy's), then lets go of the lock (and,
    pooled, of the connection). A class rather than a generator: it runs once per certificate."""

    __slots__ = ("_connection", "_database", "_lock")

    def __init__(self, database: Database, connection: PoolProxiedConnection, lock: WriterLock | None) -> None:
        self.dbapi = connection.driver_connection
        self.dialect = database.engine.dialect
        self._database = database
        self._connection = connection
        self._lock = lock

    def __enter__(self) -> WriteTransaction:
        if self._lock is not None:
            self._lock.acquire()
        return self

    def __exit__(self, _type: Any, exc: BaseException | None, _tb: Any) -> Literal[False]:
        try:
            if exc is None:
                try:
                    self.dbapi.commit()
                except BaseException as failed:
                    self._fail(failed)
                    raise
            else:
                self._fail(exc)
            return False
        finally:
            if self._lock is not None:
                self._lock.release()
            if not self._database.is_sqlite:
                self._connection.close()  # back to the pool

    def _fail(self, exc: BaseException) -> None:
        self._database._rollback(self._connection, exc)
        if isinstance(exc, self.dialect.loaded_dbapi.Error):
            raise wrap_dbapi_error(exc, self.dialect, None) from exc


class Database:
    """One engine per process, migrated to the head revision when opened."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "normal") -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        try:
            self.engine: Engine = self._create_engine(url, sqlite_synchronous)
            # SQLite connections held by threads (``write``/``query``) come from an engine of their
            # own, outside the pool: however many threads hold one, the pool stays free for the rest.
            self._held_engine = self._create_engine(url, sqlite_synchronous, pooled=False) if self.is_sqlite else None
        except Exception as exc:  # bad URL, missing driver
            raise InvalidInput(f"cannot use the database URL: {exc}") from exc
        self._held: dict[int, tuple[int, PoolProxiedConnection]] = {}  # thread id -> (pid, connection)
        self._writer_lock: WriterLock | None = None

    def serialize_writers(self, lock_file: Path) -> None:
        """SQLite: ``write`` transactions of every process using ``lock_file`` take turns in the
        kernel instead of polling SQLite's lock (see ``pki.store.writelock``)."""
        if self.is_sqlite and self._writer_lock is None:
            self._writer_lock = WriterLock(lock_file)

    def write(self) -> WriteTransaction:
        """One write transaction on a DBAPI connection, as a context manager: committed when the
        block ends, rolled back when it raises. Driver errors come out as SQLAlchemy's
        (``IntegrityError``...).

        SQLite: each thread keeps its own connection across transactions (no pool checkout and
        reset per certificate; SQLite connections cannot go stale). Other databases: a pooled
        connection per transaction, so the pool's pre-ping still replaces dead ones.
        """
        connection = self._connection()
        return WriteTransaction(self, connection, self._writer_lock)

    def query(self, statement: PreparedStatement, values: dict[str, Any]) -> Any:
        """Run one read ``statement`` outside any write transaction, on the same connections as
        ``write`` (SQLite: this thread's own; others: a pooled one, handed back at once)."""
        connection = self._connection()
        try:
            return statement.execute(connection.driver_connection, self.engine.dialect, values)
        except DBAPIError as exc:
            self._rollback(connection, exc)
            raise
        finally:
            if not self.is_sqlite:
                connection.close()

    def _connection(self) -> PoolProxiedConnection:
        if not self.is_sqlite:
            return self._connect(self.engine)
        me, pid = threading.get_ident(), _PID[0]
        held = self._held.get(me)
        if held is not None and held[0] == pid:
            return held[1]
        assert self._held_engine is not None
        connection = self._connect(self._held_engine)
        self._forget_dead_threads(pid)
        self._held[me] = (pid, connection)
        return connection

    @staticmethod
    def _connect(engine: Engine) -> PoolProxiedConnection:
        """A DBAPI connection; a driver error (server down) comes out as SQLAlchemy's."""
        try:
            return engine.raw_connection()
        except engine.dialect.loaded_dbapi.Error as exc:
            raise wrap_dbapi_error(exc, engine.dialect, None) from exc

    def _forget_dead_threads(self, pid: int) -> None:
        """Give back the connections of threads that ended (and drop, without closing, any
        inherited from a parent process: the parent still uses them)."""
        alive = {t.ident for t in threading.enumerate()}
        for ident, (owner, _connection) in list(self._held.items()):
            if owner != pid or ident not in alive:
                gone = self._held.pop(ident, None)  # another thread may be sweeping too
                if gone is not None and owner == pid:
                    gone[1].close()

    def _rollback(self, connection: PoolProxiedConnection, exc: BaseException) -> None:
        dialect = self.engine.dialect
        try:
            # A checked-out connection always has its driver connection; the Optional is for the pool.
            connection.driver_connection.rollback()  # type: ignore[union-attr]
        except dialect.loaded_dbapi.Error:
            connection.invalidate()
            self._held.pop(threading.get_ident(), None)
            return
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        if isinstance(orig, dialect.loaded_dbapi.Error) and dialect.is_disconnect(orig, None, None):
            connection.invalidate()
            self._held.pop(threading.get_ident(), None)

    @staticmethod
    def _create_engine(url: str, synchronous: str, *, pooled: bool = True) -> Engine:
        if not url.startswith("sqlite"):
            return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, **_JSON)
        extra: dict[str, Any] = {} if pooled else {"poolclass": NullPool}
        engine = create_engine(url, connect_args={"timeout": 30}, **extra, **_JSON)

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
            # The audit chain's hash, computed where the head row is advanced (pki.store.audit).
            dbapi_conn.create_function(SQLITE_SHA256, 1, sqlite_sha256_hex, deterministic=True)

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
        pid = os.getpid()
        for owner, connection in self._held.values():
            if owner == pid:
                connection.close()
        self._held.clear()
        if self._writer_lock is not None:
            self._writer_lock.close()
            self._writer_lock = None
        self.engine.dispose()
        if self._held_engine is not None:
            self._held_engine.dispose()


"""Engine creation, migrations on start, the pragmas that make SQLite a fit default, and the
write transactions of the issuance path (``Database.write``).

Lock waits are bounded (``busy_timeout``, from ``[database] busy_timeout``): SQLite's busy
timeout, PostgreSQL's ``lock_timeout``. A statement that waited that long for another process's
lock comes out as ``pki.errors.DatabaseBusy`` (503 ``database_busy`` with ``Retry-After`` in the
API, one line in the CLI), from the engine's connections (``handle_error``) and from the issuance
path's own (``Database.write``, ``Database.query``) alike."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Literal

import orjson
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, Engine, ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.pool import NullPool, PoolProxiedConnection

from pki.errors import DatabaseBusy, DatabaseMissing, DatabaseUnreachable, InvalidInput, RapkiError
from pki.store.audit import SQLITE_SHA256, sqlite_sha256_hex
from pki.store.statements import PreparedStatement, Transaction, Write, wrap_dbapi_error
from pki.store.writelock import WriterLock

MIGRATIONS = Path(__file__).parent / "migrations"

# This process's id, refreshed in a forked child: getpid() is a system call, and the held
# connections check it on every transaction.
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))
HEAD_REVISION = "0005"  # bump with every new revision in migrations/versions


# How long an API write waits for SQLite's lock once another has waited out the busy timeout in
# vain (``pki.store.writelock``): long enough for another process's ordinary transaction.
BRIEF_WAIT = 0.1
# PostgreSQL's SQLSTATE for a lock not granted within lock_timeout ("lock_not_available").
_PG_LOCK_NOT_AVAILABLE = "55P03"


def is_lock_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` (a driver's exception, or SQLAlchemy's around one) says that another
    connection held a lock for longer than this one would wait."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, sqlite3.OperationalError):
        # SQLITE_BUSY and its extended codes (BUSY_SNAPSHOT: another writer got in first)
        return (getattr(orig, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY
    return getattr(orig, "sqlstate", None) == _PG_LOCK_NOT_AVAILABLE


def without_password(url: str) -> str:
    """``url`` as it may be written to ``rapki.toml`` or shown: any password taken out (it stays in
    the environment: ``$RAPKI_DATABASE_PASSWORD``, or libpq's ``$PGPASSWORD`` / ``~/.pgpass``)."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # an unparsable URL
        raise InvalidInput(f"cannot use the database URL: {exc}") from exc
    if not parsed.password:
        return url
    bare = URL.create(parsed.drivername, parsed.username, None, parsed.host, parsed.port, parsed.database,
                      parsed.query)  # URL.set() cannot unset a part
    return bare.render_as_string(hide_password=False)


def with_password(url: str, password: str | None) -> str:
    """``url`` with ``password`` put in when it has none (``$RAPKI_DATABASE_PASSWORD``)."""
    if not password or url.startswith("sqlite"):
        return url
    parsed = make_url(url)
    return url if parsed.password else parsed.set(password=password).render_as_string(hide_password=False)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


def unreachable(exc: OperationalError) -> str:
    """One line for an unreachable database (drivers' messages span lines)."""
    return "the database is unreachable: " + " ".join(str(exc.orig).split())


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# JSON columns (SANs, profile specs, audit details) through orjson: the standard library's encoder
# builds a new C encoder for every value, a fiftieth of an issuance. Same JSON, read back alike.
_JSON: dict[str, Any] = {"json_serializer": _json_text, "json_deserializer": orjson.loads}


class WriteTransaction(Transaction):
    """``Database.write``'s transaction: takes the writer lock (if any) on entry; on exit commits,
    or rolls back and re-raises (a driver error as SQLAlchemy's, a lock wait that timed out as
    ``DatabaseBusy``), then lets go of the lock (and, pooled, of the connection). A class rather
    than a generator: it runs once per certificate.

    With a writer lock, a writer that finds it stamped busy (``WriterLock.recently_busy``) waits
    for SQLite's lock only ``BRIEF_WAIT``: see ``pki.store.writelock``."""

    __slots__ = ("_brief", "_busy", "_connection", "_database", "_lock")

    def __init__(self, database: Database, connection: PoolProxiedConnection, lock: WriterLock | None) -> None:
        self.dbapi = connection.driver_connection
        self.dialect = database.engine.dialect
        self._database = database
        self._connection = connection
        self._lock = lock
        self._brief = False
        self._busy = False

    def __enter__(self) -> WriteTransaction:
        lock = self._lock
        if lock is not None:
            lock.acquire()
            try:
                if lock.recently_busy():
                    _set_sqlite_busy_timeout(self.dbapi, min(BRIEF_WAIT, self._database.busy_timeout))
                    self._brief = True
            except BaseException:
                lock.release()
                raise
        return self

    def __exit__(self, _type: Any, exc: BaseException | None, _tb: Any) -> Literal[False]:
        committed = False
        try:
            if exc is None:
                try:
                    self.dbapi.commit()
                except BaseException as failed:
                    self._fail(failed)
                    raise
                committed = True
            else:
                self._fail(exc)
            return False
        finally:
            if self._lock is not None:
                self._release(self._lock, committed=committed)
            if not self._database.is_sqlite:
                self._connection.close()  # back to the pool

    def _release(self, lock: WriterLock, *, committed: bool) -> None:
        try:
            if self._busy:
                lock.mark_busy()
            elif self._brief and committed:
                lock.clear_busy()  # the lock was let go: writers wait normally again
            if self._brief:
                with contextlib.suppress(self.dialect.loaded_dbapi.Error):  # a connection dropped on failure
                    _set_sqlite_busy_timeout(self.dbapi, self._database.busy_timeout)
        finally:
            lock.release()

    def _fail(self, exc: BaseException) -> None:
        self._database._rollback(self._connection, exc)
        if is_lock_timeout(exc):
            self._busy = True
            raise self._database.busy_error() from exc
        if isinstance(exc, self.dialect.loaded_dbapi.Error):
            raise wrap_dbapi_error(exc, self.dialect, None) from exc


class PendingWrite:
    """A write handed to a ``CommitGroup``: after ``CommitGroup.commit``, ``error`` is None when it
    is committed, else why it is not (its own refusal, or the group's failure)."""

    __slots__ = ("error", "write")

    def __init__(self, write: Write) -> None:
        self.write = write
        self.error: Exception | None = None


class CommitGroup:
    """Writes of several requests committed in one SQLite transaction (group commit).

    A server worker that has several requests in hand at once does each one's work (CSR check,
    signing), hands its write here (``add``) and answers it only after ``commit``, which runs
    every write gathered so far in one transaction, each inside a savepoint, and commits once: the
    commit (the WAL append), the writer lock and the transaction's set-up are paid once per group
    instead of once per certificate, and the writer lock is taken only for the SQL, never while
    another request is being signed. The durability of each write is that of its own transaction:
    it is acknowledged after the commit that holds it.

    A write that raises (a token used up meanwhile: ``RapkiError``; a random serial drawn twice,
    126 random bits by default: ``IntegrityError``, reported as ``DatabaseBusy`` so the client
    retries and a new serial is drawn) is rolled back to its savepoint and only its request fails.
    Any other error, the writer lock not obtained in time (``DatabaseBusy``) or a failed commit
    fail every write of the group, none of which is then recorded. SQLite only:
    ``Database.commit_group``.
    """

    def __init__(self, database: Database) -> None:
        self._database = database
        self._pending: list[PendingWrite] = []

    def add(self, write: Write) -> PendingWrite:
        pending = PendingWrite(write)
        self._pending.append(pending)
        return pending

    def withdraw(self, pending: PendingWrite) -> None:
        """Take back a write not yet committed (its request failed after handing it over)."""
        self._pending.remove(pending)

    def commit(self) -> None:
        """Run and commit every write added since the last call; each one's outcome in its
        ``PendingWrite``: an error is reported there, not raised."""
        group, self._pending = self._pending, []
        if not group:
            return
        try:
            with self._database.write() as tx:
                if len(group) == 1:  # alone: its own transaction, as without a group (no savepoint)
                    group[0].write(tx)
                    return
                dbapi = tx.dbapi
                dbapi.execute("BEGIN IMMEDIATE")  # the write lock now, not at a savepoint's first write
                for pending in group:
                    dbapi.execute("SAVEPOINT rapki_write")
                    try:
                        pending.write(tx)
                    except (RapkiError, IntegrityError) as refused:
                        dbapi.execute("ROLLBACK TO rapki_write")
                        pending.error = _refusal(refused)
                    dbapi.execute("RELEASE rapki_write")
        except Exception as failed:  # every write of the group is told, whatever it was
            error = _refusal(failed)
            for pending in group:
                if pending.error is None:
                    pending.error = error


def _refusal(exc: Exception) -> Exception:
    """What a write's request is told: a serial drawn twice as ``DatabaseBusy`` (retried, it draws
    a new one); anything else as it is."""
    if isinstance(exc, IntegrityError):
        return DatabaseBusy("the certificate's random serial was drawn twice (nothing was recorded): try again")
    return exc


def _set_sqlite_busy_timeout(dbapi_connection: Any, seconds: float) -> None:
    dbapi_connection.execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")


class Database:
    """One engine per process, migrated to the head revision when opened."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "normal", busy_timeout: float = 2.0) -> None:
        """``busy_timeout``: seconds a statement waits for another connection's lock before it
        gives up with ``DatabaseBusy``."""
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.busy_timeout = busy_timeout
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

    def commit_group(self) -> CommitGroup | None:
        """A ``CommitGroup`` on this database, or None where there is no gain: PostgreSQL commits
        concurrent transactions side by side (row locks, many writers, commits grouped in its WAL)."""
        return CommitGroup(self) if self.is_sqlite else None

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
            if is_lock_timeout(exc):
                raise self.busy_error() from exc
            raise
        finally:
            if not self.is_sqlite:
                connection.close()

    def busy_error(self) -> DatabaseBusy:
        """The error for a lock wait that timed out, naming the database (never its password)."""
        url = make_url(self.url)
        where = url.database if self.is_sqlite else url.render_as_string(hide_password=True)
        return DatabaseBusy(f"database busy: another process holds a write lock on {where}; try again")

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

    def _create_engine(self, url: str, synchronous: str, *, pooled: bool = True) -> Engine:
        wait_ms = int(self.busy_timeout * 1000)
        if not url.startswith("sqlite"):
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, **_JSON)

            @event.listens_for(engine, "connect")
            def _lock_timeout(dbapi_conn: Any, _record: Any) -> None:
                # For the session, committed, so that the pool's rollback on check-in keeps it.
                cursor = dbapi_conn.cursor()
                cursor.execute(f"SET lock_timeout = {wait_ms}")
                cursor.close()
                dbapi_conn.commit()
        else:
            extra: dict[str, Any] = {} if pooled else {"poolclass": NullPool}
            engine = create_engine(url, connect_args={"timeout": self.busy_timeout}, **extra, **_JSON)

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                # WAL lets readers run beside the writer; busy_timeout makes writers queue instead
                # of failing, for a bounded time; synchronous=NORMAL in WAL never corrupts, but a
                # power loss (not a process crash) may drop the last transactions. See
                # docs/operations.md, "Durability" and "Lock waits".
                cursor = dbapi_conn.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
                cursor.execute(f"PRAGMA busy_timeout={wait_ms}")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.close()
                # The audit chain's hash, computed where the head row is advanced (pki.store.audit).
                dbapi_conn.create_function(SQLITE_SHA256, 1, sqlite_sha256_hex, deterministic=True)

        @event.listens_for(engine, "handle_error")
        def _busy(context: ExceptionContext) -> None:
            if is_lock_timeout(context.original_exception):
                raise self.busy_error() from context.sqlalchemy_exception

        return engine

    def migrate(self, *, existing: bool = False) -> None:
        """Apply alembic migrations up to head; cheap when already there (one query). With
        ``existing``, a database that holds no rapki tables at all is refused (DatabaseMissing)
        instead of being set up: an empty database is not the CA's."""
        try:
            revision = self.current_revision()
        except OperationalError as exc:
            raise DatabaseUnreachable(unreachable(exc)) from exc
        if revision == HEAD_REVISION:
            return
        if revision is None and existing:
            raise DatabaseMissing(f"the database {without_password(self.url)} holds no rapki CA: point "
                                  "RAPKI_DATABASE_URL or [database].url in rapki.toml at the CA's database")
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
            raise DatabaseUnreachable(unreachable(exc)) from exc

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


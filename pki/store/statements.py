"""Statements of the hot paths, compiled once and run on the DBAPI connection.

Issuing a certificate runs four statements (token redemption, certificate row, audit row, and
the token look-up before it). SQLAlchemy's per-execution machinery (execution context, compiled
cache look-up, result wrapping, transaction objects) cost more than SQLite spends running them,
so these paths compile their Core statements once per dialect and hand the SQL to the driver.

What stays SQLAlchemy's: every value goes through its column type's ``bind_processor`` and every
result through its ``result_processor``, so rows written here read back through SQLAlchemy
exactly as if it had written them; driver errors are re-raised as SQLAlchemy's
(``IntegrityError``, ``OperationalError``..., parameters hidden), so callers catch the same
exceptions as on the Core path.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, NamedTuple

from sqlalchemy import DateTime, Integer, Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError


def wrap_dbapi_error(exc: Exception, dialect: Dialect, sql: str | None) -> BaseException:
    """``exc`` from the driver as SQLAlchemy's exception class for it (a ``DBAPIError`` for driver
    errors), parameters hidden."""
    # is_disconnect is typed for the driver's Error class; any exception is accepted at run time.
    disconnect = dialect.is_disconnect(exc, None, None)  # type: ignore[arg-type]
    return DBAPIError.instance(sql, None, exc, dialect.loaded_dbapi.Error, hide_parameters=True,
                               connection_invalidated=disconnect, dialect=dialect)


class Transaction:
    """A write transaction on one DBAPI connection (``Database.write``), for callers that add
    their statements to it (a token redemption in the certificate's transaction)."""

    __slots__ = ("dbapi", "dialect")

    def __init__(self, dbapi: Any, dialect: Dialect) -> None:
        self.dbapi = dbapi
        self.dialect = dialect

    def run(self, statement: PreparedStatement, values: dict[str, Any]) -> Any:
        return statement.execute(self.dbapi, self.dialect, values)

    def insert(self, row: BoundInsert) -> None:
        """Insert a row bound beforehand (``PreparedInsert.bind``): converting the values needs no
        lock, so it is done before the transaction takes the writer lock."""
        row.execute(self.dbapi, self.dialect)


# A transaction's writes as one function (``CertificateAuthority._record``), and a place to hand
# such a function to be run later, in a transaction shared with others (``db.CommitGroup.add``).
Write = Callable[[Transaction], None]
Defer = Callable[[Write], object]


def _bind_processor(column: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    if process is not None and isinstance(column.type, DateTime):
        return _remembering_last(process)
    return process


def _remembering_last(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``process`` that answers again from memory when given the value it was last given.

    SQLite stores datetimes as text, formatted anew for every value (~3 us each). Certificates
    issued in one second share their times (not_before, not_after, created_at are whole seconds),
    so in a burst each column sees the same value over and over. The memory is one tuple replaced
    whole, so threads sharing the statement never read a value with another value's text; the
    tzinfo must be the same object too, since the text is the wall time in the value's zone.
    """
    last: tuple[Any, Any, Any] = (None, None, None)

    def remembered(value: Any) -> Any:
        nonlocal last
        if value is None:
            return None  # SQL NULL, as every DateTime processor answers
        seen = last
        if value == seen[0] and value.tzinfo is seen[1]:
            return seen[2]
        result = process(value)
        last = (value, value.tzinfo, result)
        return result

    return remembered


class PreparedStatement:
    """A Core statement with named bind parameters only (``bindparam``), compiled per dialect."""

    def __init__(self, statement: Any, params: dict[str, Any], columns: tuple[Any, ...] = ()) -> None:
        self.statement = statement
        self.param_types = params  # bind name -> column whose type converts the value
        self.columns = columns  # result columns, in the statement's order
        self._compiled: dict[str, tuple[str, list[str] | None, dict[str, Any], list[Any]]] = {}

    def _for(self, dialect: Dialect) -> tuple[str, list[str] | None, dict[str, Any], list[Any]]:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            done = self.statement.compile(dialect=dialect)
            if set(done.binds) != set(self.param_types):  # only the named parameters, no literals
                raise RuntimeError(f"unexpected parameters {sorted(done.binds)}")
            binds = {name: _bind_processor(col, dialect) for name, col in self.param_types.items()}
            results = [col.type.dialect_impl(dialect).result_processor(dialect, None) for col in self.columns]
            positional = list(done.positiontup) if done.positiontup else None
            compiled = self._compiled[dialect.name] = (done.string, positional, binds, results)
        return compiled

    def bind(self, dialect: Dialect, values: dict[str, Any]) -> BoundInsert:
        """The statement with ``values`` converted for ``dialect``'s driver, to run later in a
        transaction (``Transaction.insert``) without reading a result: a write whose values are
        all known before the transaction, converted outside the writer lock."""
        sql, positional, binds, _results = self._for(dialect)
        params = {k: (p(v) if (p := binds[k]) is not None else v) for k, v in values.items() if k in binds}
        return BoundInsert(sql, tuple(params[n] for n in positional) if positional else params)

    def execute(self, dbapi_connection: Any, dialect: Dialect, values: dict[str, Any]) -> Any:
        """Run on ``dbapi_connection``: the row count for statements without result columns, else
        the first row (processed) or None."""
        sql, positional, binds, results = self._for(dialect)
        params = {k: (p(v) if (p := binds[k]) is not None else v) for k, v in values.items()}
        args: Any = tuple(params[n] for n in positional) if positional else params
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(sql, args)
                if not self.columns:
                    return cursor.rowcount
                row = cursor.fetchone()
            finally:
                cursor.close()
        except dialect.loaded_dbapi.Error as exc:
            raise wrap_dbapi_error(exc, dialect, sql) from exc
        if row is None:
            return None
        return tuple(p(v) if p is not None else v for p, v in zip(results, row, strict=True))


class PreparedInsert:
    """``INSERT`` of one row into ``table`` (every column but an autoincrement key), compiled per
    dialect; values are given for every column, by name."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.columns = [c for c in table.columns if not (c.primary_key and c.autoincrement in (True, "auto")
                                                         and isinstance(c.type, Integer))]
        self.keys = frozenset(c.key for c in self.columns)
        self._compiled: dict[str, tuple[str, bool, list[tuple[str, Any]]]] = {}

    def _for(self, dialect: Dialect) -> tuple[str, bool, list[tuple[str, Any]]]:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            done = insert(self.table).compile(dialect=dialect, column_keys=[c.key for c in self.columns])
            processors = {c.key: _bind_processor(c, dialect) for c in self.columns}
            # Parameters in the order the driver takes them (positional) or by name: one pass per row.
            names = list(done.positiontup) if done.positiontup else list(processors)
            compiled = (done.string, bool(done.positiontup), [(n, processors[n]) for n in names])
            self._compiled[dialect.name] = compiled
        return compiled

    def bind(self, dialect: Dialect, values: dict[str, Any]) -> BoundInsert:
        """The row ``values`` (every column, by name) converted for ``dialect``'s driver."""
        sql, positional, order = self._for(dialect)
        args: Any
        try:  # every column is read (a missing one raises); the same count means nothing extra
            if len(values) != len(order):
                raise KeyError
            if positional:
                args = tuple([values[n] if p is None else p(values[n]) for n, p in order])
            else:
                args = {n: values[n] if p is None else p(values[n]) for n, p in order}
        except KeyError:
            raise ValueError(f"columns differ: {sorted(self.keys ^ values.keys())}") from None
        return BoundInsert(sql, args)


class BoundInsert(NamedTuple):
    """A write with its values converted (a ``PreparedInsert`` row, or ``PreparedStatement.bind``):
    ready to run in a transaction."""

    sql: str
    args: Any

    def execute(self, dbapi_connection: Any, dialect: Dialect) -> None:
        try:
            if isinstance(dbapi_connection, sqlite3.Connection):
                dbapi_connection.execute(self.sql, self.args)  # its cursor made and dropped in C
            else:
                cursor = dbapi_connection.cursor()
                try:
                    cursor.execute(self.sql, self.args)
                finally:
                    cursor.close()
        except dialect.loaded_dbapi.Error as exc:
            raise wrap_dbapi_error(exc, dialect, self.sql) from exc

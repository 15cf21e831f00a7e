"""``Database.write`` / ``Database.query``: the issuance path's transactions, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import IntegrityError

from pki.ca.authority import CertificateAuthority
from pki.store import Database
from pki.store.schema import audit_log, profiles
from pki.store.statements import PreparedInsert
from tests.conftest import make_ca


def _row(name: str) -> dict[str, object]:
    now = datetime.now(UTC)
    return {"name": name, "spec": {"k": name}, "created_at": now, "updated_at": now}


def _count(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(profiles)).scalar_one())


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'x.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_database_url")
    database = Database(url)
    database.migrate()
    yield database  # type: ignore[misc]
    database.dispose()


def test_write_commits_at_the_end_and_rolls_back_on_error(db: Database) -> None:
    insert = PreparedInsert(profiles)
    with db.write() as tx:
        tx.insert(insert.bind(tx.dialect, _row("a")))
    with pytest.raises(RuntimeError, match="boom"), db.write() as tx:
        tx.insert(insert.bind(tx.dialect, _row("b")))
        raise RuntimeError("boom")
    with pytest.raises(IntegrityError), db.write() as tx:  # the driver's error, as SQLAlchemy's
        tx.insert(insert.bind(tx.dialect, _row("c")))
        tx.insert(insert.bind(tx.dialect, _row("a")))
    assert _count(db) == 1  # only "a": "b" and "c" were rolled back with their transactions
    with db.write() as tx:  # the connection is usable after both failures
        tx.insert(insert.bind(tx.dialect, _row("d")))
    assert _count(db) == 2


def test_prepared_rows_store_times_exactly_as_sqlalchemy_does(db: Database) -> None:
    """Repeated, equal-but-differently-zoned and naive times, one after another: what a prepared
    insert stores (its datetime text is remembered between equal values) is what Core stores."""
    base = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
    plus_two = timezone(timedelta(hours=2))
    times = [base, base, base.astimezone(plus_two), base, base + timedelta(seconds=1), base.replace(tzinfo=None),
             base, base.astimezone(plus_two)]
    prepared = PreparedInsert(profiles)
    for i, when in enumerate(times):
        row = {"name": f"p{i}", "spec": {}, "created_at": when, "updated_at": base}
        with db.write() as tx:
            tx.insert(prepared.bind(tx.dialect, row))
        with db.engine.begin() as conn:
            conn.execute(insert(profiles).values(**{**row, "name": f"c{i}"}))
    with db.engine.connect() as conn:
        if db.is_sqlite:  # the stored text itself, not just what it reads back as
            stored = dict(conn.execute(text("SELECT name, created_at FROM profiles")).all())
        else:
            stored = dict(conn.execute(select(profiles.c.name, profiles.c.created_at)).all())
    assert [stored[f"p{i}"] for i in range(len(times))] == [stored[f"c{i}"] for i in range(len(times))]
    assert len({stored[f"p{i}"] for i in range(len(times))}) > 1  # the zones did not all collapse into one


def test_insert_refuses_missing_or_extra_columns(db: Database) -> None:
    prepared = PreparedInsert(profiles)
    with pytest.raises(ValueError, match=r"columns differ: \['created_at', 'spec', 'updated_at'\]"):
        prepared.bind(db.engine.dialect, {"name": "x"})
    row = {"name": "x", "spec": {}, "created_at": datetime.now(UTC), "updated_at": datetime.now(UTC)}
    with pytest.raises(ValueError, match=r"columns differ: \['extra'\]"):
        prepared.bind(db.engine.dialect, {**row, "extra": 1})
    assert _count(db) == 0


def test_more_issuing_threads_than_the_pool_holds(tmp_path: Path, passphrase_env: str) -> None:
    """SQLite threads keep their own connections outside the pool (15 at most): 40 threads issuing
    and listing at once must neither wait for the pool nor lose a certificate."""
    ca = make_ca(tmp_path / "home")
    errors: list[str] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                ca.issue("web", cn=f"web-{i}", key_type="ec-p256")
                ca.list_certificates(limit=2)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(ca.list_certificates()) == 120
    with ca.db.engine.connect() as conn:
        issued = conn.execute(select(func.count()).select_from(audit_log)
                              .where(audit_log.c.action == "certificate.issue")).scalar_one()
    assert issued == 120


def test_connections_of_ended_threads_are_given_back(tmp_path: Path, passphrase_env: str) -> None:
    ca: CertificateAuthority = make_ca(tmp_path / "home")
    threads = [threading.Thread(target=ca.issue, args=("web",), kwargs={"cn": "web-1"}) for _ in range(5)]
    for t in threads:
        t.start()
        t.join()
    ca.issue("web", cn="web-2")  # this thread takes its connection and sweeps the ended ones
    assert list(ca.db._held) == [threading.get_ident()]



def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    """gunicorn forks workers: a child must never write through its parent's SQLite connection."""
    import os

    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    db.migrate()
    insert = PreparedInsert(profiles)
    with db.write() as tx:
        tx.insert(insert.bind(tx.dialect, _row("parent-1")))
        parents = tx.dbapi
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        code = 1
        try:
            with db.write() as tx:
                tx.insert(insert.bind(tx.dialect, _row("child")))
                code = 0 if tx.dbapi is not parents else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with db.write() as tx:  # the parent's own connection still works
        tx.insert(insert.bind(tx.dialect, _row("parent-2")))
        assert tx.dbapi is parents
    assert _count(db) == 3

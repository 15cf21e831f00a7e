"""The alembic migrations produce exactly the tables ``pki.store.schema`` describes."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from pki.store import Database, metadata
from pki.store.db import HEAD_REVISION


def _diff(url: str) -> list[object]:
    db = Database(url)
    db.migrate()
    assert db.current_revision() == HEAD_REVISION
    db.migrate()  # a second start is a no-op
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        return list(compare_metadata(context, metadata))


def test_sqlite_schema_matches_the_models(tmp_path: Path) -> None:
    assert _diff(f"sqlite:///{tmp_path / 'x.db'}") == []


@pytest.mark.postgres
def test_postgresql_schema_matches_the_models(pg_database_url: str) -> None:
    assert _diff(pg_database_url) == []


def test_head_revision_constant_is_the_real_head() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from pki.store.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD_REVISION


def test_prepared_insert_raises_sqlalchemy_errors(tmp_path: Path) -> None:
    """Callers catch sqlalchemy.exc.IntegrityError (serial collisions) and OperationalError (503)."""
    from datetime import UTC, datetime

    from sqlalchemy.exc import IntegrityError

    from pki.store.schema import profiles
    from pki.store.statements import PreparedInsert

    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    db.migrate()
    row = {"name": "p", "spec": {}, "created_at": datetime.now(UTC), "updated_at": datetime.now(UTC)}
    insert = PreparedInsert(profiles)
    with db.write() as tx:
        tx.insert(insert.bind(tx.dialect, row))
    with pytest.raises(IntegrityError), db.write() as tx:
        tx.insert(insert.bind(tx.dialect, row))
    with db.engine.connect() as conn:  # the failed transaction was rolled back, the first one kept
        assert conn.execute(text("SELECT count(*) FROM profiles")).scalar() == 1

"""The alembic migrations produce exactly the tables ``pki.store.schema`` describes."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

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

"""Persistence: SQLAlchemy Core tables, the engine factory and alembic migrations.

SQLite (WAL) is the embedded default; PostgreSQL is selected with a ``postgresql+psycopg://`` URL.
Core (not the ORM) is used on the issuance path because it is the hot path of the CA.
"""

from pki.store.db import Database
from pki.store.schema import metadata

__all__ = ["Database", "metadata"]

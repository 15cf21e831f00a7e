"""Persistence, and all of the library's SQL: the tables, the engine, alembic migrations, and
every statement the library runs.

- ``pki.store.schema``: the SQLAlchemy Core tables (a change needs an alembic revision).
- ``pki.store.db``: ``Database``, the engine (SQLite in WAL mode by default, PostgreSQL with a
  ``postgresql+psycopg://`` URL), migrations on open, and the issuance path's write transactions.
- ``pki.store.statements``: statements compiled once per dialect and run on the driver's
  connection (the issuance path).
- One module of statements per concern, functions taking a ``Connection`` (and the prepared
  statements of the hot paths): ``audit`` (and its hash chain's head row), ``issuers``,
  ``profiles``, ``certificates``, ``crls``, ``publications`` (and the publish lock), ``tokens``,
  ``ratelimits`` (the API's counters and seen signatures when replicas share PostgreSQL).

Owns: how rows are read and written; not what they mean (that is ``pki.ca``). Rows come back as
SQLAlchemy rows; ``pki.store.times.utc`` gives back the zone SQLite drops.
May import: ``pki.errors``, ``pki.auditchain`` (the audit chain's hashing), SQLAlchemy and alembic.
Nothing else in ``pki``: the CA, the AWS
publisher and the service call these functions instead of building SQL of their own.
Core (not the ORM) throughout: issuance is the hot path of the CA.
"""

from pki.store.db import Database
from pki.store.schema import metadata

__all__ = ["Database", "metadata"]

"""One SQLite writer at a time across the API's workers, waiting in the kernel, not in sleeps.

SQLite allows one write transaction at a time. A writer that finds the lock taken polls with
``busy_timeout``, which sleeps 1, 2, 5, 10... milliseconds between tries; an issuance holds the
lock for well under a millisecond, so under load most of a worker's time went into those sleeps.
Here each enrollment's recording transaction first takes an exclusive ``flock`` on
``HOME/run/sqlite-writer.lock`` (and a thread lock, since ``flock`` does not exclude threads of one
process): waiters block in the kernel and wake the moment the holder is done. The lock is released
when the connection goes back to the pool, i.e. right after COMMIT or ROLLBACK.

Writers that do not take it (the CLI, CRL builds) still work: they meet SQLite's own lock as
before. With PostgreSQL none of this is used.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine


class WriterLock:
    def __init__(self, engine: Engine, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._thread_lock = threading.Lock()
        self._key = f"rapki_writer_lock_{id(self)}"  # two apps on one engine must not release each other's
        event.listen(engine.pool, "checkin", self._on_checkin)
        event.listen(engine.pool, "close", self._on_checkin)

    def wrap(self, within: Callable[[Connection], None] | None = None) -> Callable[[Connection], None]:
        """A ``within`` callback for ``CertificateAuthority.issue``: lock first, then ``within``."""

        def locked(conn: Connection) -> None:
            # conn.info is the pool record's info: the checkin event below sees the same dict.
            if not conn.info.get(self._key):
                self._acquire()
                conn.info[self._key] = True
            if within is not None:
                within(conn)

        return locked

    def _acquire(self) -> None:
        self._thread_lock.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def _on_checkin(self, _dbapi_connection: Any, record: Any) -> None:
        if record is not None and record.info.pop(self._key, False):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._thread_lock.release()

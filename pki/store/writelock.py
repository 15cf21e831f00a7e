"""One SQLite writer at a time across processes, waiting in the kernel, not in sleeps.

SQLite allows one write transaction at a time. A writer that finds the lock taken polls with
``busy_timeout``, which sleeps 1, 2, 5, 10... milliseconds between tries; an issuance holds the
lock for well under a millisecond, so under load most of a busy server's time went into those
sleeps. With a ``WriterLock`` (``Database.serialize_writers``, which ``rapki serve`` turns on),
every ``Database.write`` transaction first takes an exclusive ``flock`` on a file beside the data
(and a thread lock, since ``flock`` does not exclude threads of one process): waiters block in
the kernel and wake the moment the holder has committed or rolled back.

Writers that do not take it (CLI commands, CRL builds) still work: they meet SQLite's own lock
and its busy timeout, as before. PostgreSQL needs none of this (row locks, many writers).
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path


class WriterLock:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._thread_lock = threading.Lock()

    def acquire(self) -> None:
        self._thread_lock.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    def close(self) -> None:
        os.close(self._fd)

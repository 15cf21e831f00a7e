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

Another process holding SQLite's lock for long (``sqlite3 rapki.db`` with a transaction left
open, a long CRL build) would otherwise queue every API write here: each waits out the busy
timeout of every writer ahead of it, on a worker that serves nothing else meanwhile. So a writer
that waited out the whole busy timeout in vain stamps the file (``mark_busy``); writers that find
a stamp under ``BUSY_WINDOW`` old (``recently_busy``) wait only briefly for SQLite's lock (enough
for another process's ordinary transaction), and the first of them that gets through clears it.
A write thus gives up within about one busy timeout of its start however many queue, the workers
stay free for reads while the lock is held, and writes go through again as soon as it is let go.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
from pathlib import Path

_STAMP = struct.Struct("<d")  # when a writer last gave up (Unix time), at the start of the file
# How long a writer's giving up keeps the next ones from waiting out the busy timeout: a lock held
# that long is someone's open session or a stuck process, and a minute spans a client's retries.
BUSY_WINDOW = 60.0


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

    def mark_busy(self) -> None:
        """Say that a writer holding this lock just gave up waiting for SQLite's."""
        os.pwrite(self._fd, _STAMP.pack(time.time()), 0)

    def clear_busy(self) -> None:
        os.pwrite(self._fd, _STAMP.pack(0.0), 0)

    def recently_busy(self) -> bool:
        """Whether a writer gave up less than ``BUSY_WINDOW`` ago (and none got through since).
        Called with the lock held: no one else writes the stamp meanwhile."""
        data = os.pread(self._fd, _STAMP.size, 0)
        if len(data) < _STAMP.size:
            return False
        return 0 <= time.time() - _STAMP.unpack(data)[0] < BUSY_WINDOW

    def close(self) -> None:
        os.close(self._fd)

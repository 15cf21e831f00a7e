"""State the API workers share that is not CA state: rate-limit counters and seen signatures.

One interface, ``SharedState``, two homes for the rows, chosen by ``create_app`` from the CA
database's dialect:

* **PostgreSQL** (``DatabaseState``): in the CA database (tables ``rate_counters`` and
  ``seen_signatures``, statements in ``pki.store.ratelimits``), so that every replica of
  ``rapki serve`` on every host counts in the same rows: a limit holds across all of them, and a
  signed request seen by one replica is a replay on any other. Each count is one upsert, atomic
  under concurrent replicas; an enrollment's counters are one transaction.
* **SQLite** (``FileState``): a small SQLite file next to the CA (``HOME/api-state.db``), not in
  the CA database: every worker process (and thread) of the one ``rapki serve`` sees the same
  counters; counting a request never takes the CA database's write lock, so a flood of refused
  requests does not slow down issuance (SQLite has one writer at a time); the file runs
  ``synchronous=OFF``: losing the last counters in a power cut is harmless. A SQLite CA database
  has one host, so the per-host file is the whole count.

Limits are fixed windows (``N/period``): at most N requests per key in each period-long window,
placed by the serving process's clock (replicas' clocks are assumed in step, as NTP keeps them).
Finished windows and expired signatures are dropped now and then (one call in a hundred), a
bounded amount each time.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pki.errors import InvalidInput, RapkiError
from pki.store import ratelimits
from pki.store.db import Database
from pki.x509.durations import parse_duration

# The share of calls that also drop finished windows and expired signatures.
HOUSEKEEPING = 0.01



class RateLimited(RapkiError):
    code = "rate_limited"
    exit_code = 1
    http_status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Limit:
    count: int
    period: int  # seconds

    @classmethod
    def parse(cls, text: str) -> Limit | None:
        """``"30/m"``, ``"1000/1h"``; ``"0"`` or ``"off"`` disables."""
        raw = str(text).strip().lower()
        if raw in ("0", "off", "none", ""):
            return None
        count, _, period = raw.partition("/")
        try:
            n = int(count)
        except ValueError:
            raise InvalidInput(f"invalid rate limit {text!r}: use COUNT/PERIOD, e.g. 30/m") from None
        if n <= 0 or not period:
            raise InvalidInput(f"invalid rate limit {text!r}: use COUNT/PERIOD, e.g. 30/m")
        seconds = int(parse_duration(period if period[0].isdigit() else f"1{period}").total_seconds())
        return cls(n, seconds)

    def window(self, now: int) -> tuple[int, int]:
        """The window ``now`` (Unix seconds) falls in, and the Unix time it ends."""
        window = now // self.period
        return window, (window + 1) * self.period

    def refusal(self, now: int, what: str) -> RateLimited:
        ends = self.window(now)[1]
        retry = ends - now
        return RateLimited(f"too many requests {what} (limit {self.count} per {self.period}s): retry in {retry}s",
                           retry_after=max(1, retry))


Hit = tuple[str, Limit | None, str]  # (key, its limit or None when switched off, what the refusal says)


class SharedState(Protocol):
    """Rate-limit counters and seen request signatures, as every worker and replica of the API
    sees them."""

    def hit(self, key: str, limit: Limit | None, what: str) -> None:
        """Count one request for ``key``; RateLimited when over ``limit`` in this window."""
        self.hit_all([(key, limit, what)])

    def hit_all(self, hits: list[Hit]) -> None:
        """Count one request for each ``(key, limit, what)`` in order, in one write transaction
        (one commit for an enrollment's address and token counters, not one each): RateLimited at
        the first key over its limit, the keys after it not counted, as separate ``hit`` calls.
        A limit of None (switched off) counts nothing."""
        ...

    def first_use(self, digest: str, ttl: int) -> bool:
        """Record ``digest`` (a signature) as seen for ``ttl`` seconds; False when it was seen
        before (a replay)."""
        ...


class DatabaseState(SharedState):
    """In the CA database (PostgreSQL), shared by every replica: ``pki.store.ratelimits``.
    ``clock`` (Unix seconds) places requests in their windows."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        if db.is_sqlite:
            raise ValueError("a SQLite CA database keeps the API's counters in a file of its own (FileState)")
        self.db = db
        self.clock = clock

    def hit_all(self, hits: list[Hit]) -> None:
        counted = [(key, limit, what) for key, limit, what in hits if limit is not None]
        if not counted:
            return
        now = int(self.clock())
        refused: RateLimited | None = None
        with self.db.write() as tx:
            for key, limit, what in counted:
                window, ends = limit.window(now)
                if ratelimits.count_hit(tx, key, window, ends) > limit.count:
                    refused = limit.refusal(now, what)
                    break
        self._housekeeping(now)
        if refused is not None:
            raise refused

    def first_use(self, digest: str, ttl: int) -> bool:
        now = int(self.clock())
        with self.db.write() as tx:
            first = ratelimits.first_use(tx, digest, now + ttl)
        self._housekeeping(now)
        return first

    def _housekeeping(self, now: int) -> None:
        # Its own transaction, after the counting one: the counters' row locks are not held
        # while it runs.
        if random.random() < HOUSEKEEPING:
            with self.db.write() as tx:
                ratelimits.drop_expired(tx, now)


class FileState(SharedState):
    """One SQLite connection per thread on the host's state file; ``clock`` (Unix seconds, the
    same in every worker process) places requests in their windows."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS rate_counters (key TEXT NOT NULL, window INTEGER NOT NULL, "
                         "count INTEGER NOT NULL, expires INTEGER NOT NULL, PRIMARY KEY (key, window)) WITHOUT ROWID")
            conn.execute("CREATE TABLE IF NOT EXISTS seen_signatures (digest TEXT PRIMARY KEY, "
                         "expires INTEGER NOT NULL) WITHOUT ROWID")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("PRAGMA busy_timeout=10000")
            self._local.conn = conn
        return conn

    def hit_all(self, hits: list[Hit]) -> None:
        hits = [h for h in hits if h[1] is not None]
        if not hits:
            return
        now = int(self.clock())
        conn = self._conn()
        refused: RateLimited | None = None
        conn.execute("BEGIN IMMEDIATE")
        try:
            for key, limit, what in hits:
                assert limit is not None
                window, ends = limit.window(now)
                count = conn.execute(
                    "INSERT INTO rate_counters (key, window, count, expires) VALUES (?, ?, 1, ?) "
                    "ON CONFLICT (key, window) DO UPDATE SET count = count + 1 RETURNING count",
                    (key, window, ends),
                ).fetchone()[0]
                if count > limit.count:
                    refused = limit.refusal(now, what)
                    break
            if random.random() < HOUSEKEEPING:  # amortised over requests: drop finished windows
                conn.execute("DELETE FROM rate_counters WHERE expires < ?", (now,))
                conn.execute("DELETE FROM seen_signatures WHERE expires < ?", (now,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if refused is not None:
            raise refused

    def first_use(self, digest: str, ttl: int) -> bool:
        try:
            self._conn().execute("INSERT INTO seen_signatures (digest, expires) VALUES (?, ?)",
                                 (digest, int(self.clock()) + ttl))
        except sqlite3.IntegrityError:
            return False
        return True

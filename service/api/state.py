"""State the API workers share that is not CA state: rate-limit counters and seen signatures.

Kept in a small SQLite file next to the CA (``HOME/api-state.db``), not in the CA database:

* every worker process (and thread) of one ``rapki serve`` sees the same counters, so limits hold
  whatever the number of workers, without Redis;
* counting a request never takes the CA database's write lock, so a flood of refused requests
  does not slow down issuance (SQLite has one writer at a time);
* the file runs ``synchronous=OFF``: losing the last counters in a power cut is harmless.

Limits are fixed windows (``N/period``): at most N requests per key in each period-long window.
With several API hosts behind a load balancer each host counts for itself (documented).
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pki.errors import InvalidInput, RapkiError
from pki.x509.durations import parse_duration


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


class SharedState:
    """One SQLite connection per thread on the shared state file; ``clock`` (Unix seconds, the
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

    def hit(self, key: str, limit: Limit | None, what: str) -> None:
        """Count one request for ``key``; RateLimited when over ``limit`` in this window."""
        self.hit_all([(key, limit, what)])

    def hit_all(self, hits: list[tuple[str, Limit | None, str]]) -> None:
        """Count one request for each ``(key, limit, what)`` in order, in one write transaction
        (one commit for an enrollment's address and token counters, not one each): RateLimited at
        the first key over its limit, the keys after it not counted, as separate ``hit`` calls."""
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
                window = now // limit.period
                count = conn.execute(
                    "INSERT INTO rate_counters (key, window, count, expires) VALUES (?, ?, 1, ?) "
                    "ON CONFLICT (key, window) DO UPDATE SET count = count + 1 RETURNING count",
                    (key, window, (window + 1) * limit.period),
                ).fetchone()[0]
                if count > limit.count:
                    retry = (window + 1) * limit.period - now
                    refused = RateLimited(f"too many requests {what} (limit {limit.count} per {limit.period}s): "
                                          f"retry in {retry}s", retry_after=max(1, retry))
                    break
            if random.random() < 0.01:  # housekeeping, amortised over requests: drop finished windows
                conn.execute("DELETE FROM rate_counters WHERE expires < ?", (now,))
                conn.execute("DELETE FROM seen_signatures WHERE expires < ?", (now,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if refused is not None:
            raise refused

    def first_use(self, digest: str, ttl: int) -> bool:
        """Record ``digest`` (a signature) as seen; False when it was seen before (a replay)."""
        try:
            self._conn().execute("INSERT INTO seen_signatures (digest, expires) VALUES (?, ?)",
                                 (digest, int(self.clock()) + ttl))
        except sqlite3.IntegrityError:
            return False
        return True

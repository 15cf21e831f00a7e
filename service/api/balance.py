"""Connections spread evenly over ``rapki serve``'s workers (least connections first).

gunicorn's workers all accept from one listening socket, and asyncio accepts every connection
waiting there in one go (up to its backlog) in whichever worker wakes first. Clients that open
their keep-alive connections together (a fleet starting, a load balancer's pool, a load test) then
land mostly on one worker: it runs every request on one CPU while the other workers sit idle, for
as long as those connections live. Measured with 16 keep-alive clients on 2 workers: 15 and 1
connections, one CPU busy, the other idle.

Here each worker counts its open connections (those in their TLS handshake included) in a slot of
memory the arbiter shares with every worker (``ConnectionBalance``), and accepts one connection at
a time, and only while it holds at most ``SLACK`` more than the least loaded live worker. A worker
that has more defers (stops watching the listening socket for ``DEFER``, then looks again), so the
least loaded worker takes the next connection as soon as its event loop comes round. Deferring is
bounded: a worker that has waited ``MAX_DEFER`` in a row accepts anyway, so a worker that is stuck
or busy with a long request delays new connections by at most that much, never refuses them.

Why a slack of one and not strict least-connections: with strict counts, a worker one connection
ahead defers every new connection to a worker that may be in the middle of a batch of requests.
HTTP clients that open a spare connection when none of theirs is free at that instant (Go's
``net/http`` does, and drops the spare if its pool is full by the time it is ready) then open
more while the first waits, and most of them are dropped after their TLS handshake: measured with
16 ``hey`` clients on 2 workers, 657 connections per 1,000 requests with strict counts, 6.7 with a
slack of one (6.1 without any balancing).

A worker's slot is marked absent when it exits (``vacate``), so a worker being replaced is not
waited for. Counts are read without a lock: a stale read only makes a worker accept one
connection more or defer once more.
"""

from __future__ import annotations

import ctypes
import multiprocessing
from typing import Any

ABSENT = -1
SLACK = 1  # a worker takes a connection while it holds at most this many more than the least loaded
DEFER = 0.002  # seconds a worker with more connections than another waits before it looks again
MAX_DEFER = 0.02  # the longest a connection waits for the least loaded worker to take it


class ConnectionBalance:
    """Open connections per worker slot, in memory shared across ``fork`` (made in the arbiter)."""

    def __init__(self, slots: int) -> None:
        self._counts: Any = multiprocessing.RawArray(ctypes.c_long, [ABSENT] * slots)
        self.slot: int | None = None  # this process's slot, once a worker took one

    @property
    def slots(self) -> int:
        return len(self._counts)

    def take(self, slot: int | None) -> None:
        """In a new worker: serve as ``slot`` (None, or past the slots: accept freely)."""
        if slot is not None and 0 <= slot < len(self._counts):
            self._counts[slot] = 0
            self.slot = slot

    def vacate(self, slot: int | None) -> None:
        """In the arbiter, when the worker holding ``slot`` has exited."""
        if slot is not None and 0 <= slot < len(self._counts):
            self._counts[slot] = ABSENT

    def opened(self) -> None:
        if self.slot is not None:
            self._counts[self.slot] += 1

    def closed(self) -> None:
        if self.slot is not None:
            self._counts[self.slot] -= 1

    def counts(self) -> list[int]:
        return list(self._counts)

    def my_turn(self) -> bool:
        """Whether this worker should take the next connection: no live worker has ``SLACK`` or
        more fewer than it."""
        if self.slot is None:
            return True
        least = self._counts[self.slot] - SLACK
        return all(count == ABSENT or count >= least for count in self._counts)


# The balance of this server: made by ``service.api.server.run`` before gunicorn forks its workers;
# None elsewhere (tests, ``service.api.crlfiles``): every connection is then accepted at once.
BALANCE: list[ConnectionBalance | None] = [None]


def current() -> ConnectionBalance | None:
    return BALANCE[0]

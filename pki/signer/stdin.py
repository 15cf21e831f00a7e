"""Standard input, read once per process: ``--certificate -`` and ``--private-key -`` share one PEM
stream, and the cache keys on the same bytes. Standard library only (a cache hit loads this)."""

from __future__ import annotations

import sys

STDIN = "-"
_data: bytes | None = None


def read_stdin() -> bytes:
    global _data
    if _data is None:
        _data = sys.stdin.buffer.read()
    return _data

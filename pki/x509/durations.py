"""Human durations: ``90s``, ``15m``, ``24h``, ``30d``, ``10y`` (and plain seconds)."""

from __future__ import annotations

import re
from datetime import timedelta

from pki.errors import InvalidInput

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_PART = re.compile(r"(\d+)([smhdwy])")


def parse_duration(text: str | int | timedelta) -> timedelta:
    """Parse ``"1d12h"``-style text into a positive timedelta; raise InvalidInput otherwise."""
    if isinstance(text, timedelta):
        value = text
    elif isinstance(text, int) and not isinstance(text, bool):
        value = timedelta(seconds=text)
    else:
        raw = str(text).strip().lower()
        if raw.isdigit():
            value = timedelta(seconds=int(raw))
        else:
            parts = _PART.findall(raw)
            if not parts or "".join(n + u for n, u in parts) != raw:
                raise InvalidInput(
                    f"invalid duration {text!r}: use a number with a unit, e.g. 15m, 24h, 30d"
                )
            value = timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))
    if value <= timedelta(0):
        raise InvalidInput(f"invalid duration {text!r}: must be positive")
    return value


def format_duration(value: timedelta) -> str:
    """The shortest exact form: 86400s -> ``1d``, 5400s -> ``90m``."""
    seconds = int(value.total_seconds())
    for unit in ("y", "w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"

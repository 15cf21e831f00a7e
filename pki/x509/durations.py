"""Human durations: ``90s``, ``15m``, ``24h``, ``30d``, ``10y`` (and plain seconds)."""

from __future__ import annotations

import re
from datetime import timedelta

from pki.errors import InvalidInput

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_PART = re.compile(r"([0-9]+)([smhdwy])")
# Longer than any certificate, token or CRL rapki makes; also keeps the arithmetic far from
# timedelta's limits, so absurd input is a clear error rather than an overflow.
MAX_DURATION = timedelta(days=1000 * 365)


def parse_duration(text: str | int | timedelta) -> timedelta:
    """Parse ``"1d12h"``-style text into a positive timedelta; raise InvalidInput otherwise."""
    if isinstance(text, timedelta):
        value = text
    elif isinstance(text, int) and not isinstance(text, bool):
        value = _seconds(text, text)
    else:
        raw = str(text).strip().lower()
        if len(raw) > 64:
            raise InvalidInput(f"invalid duration {raw[:20]!r}...: too long to be a duration")
        if raw.isascii() and raw.isdigit():
            value = _seconds(int(raw), text)
        else:
            parts = _PART.findall(raw)
            if not parts or "".join(n + u for n, u in parts) != raw:
                raise InvalidInput(
                    f"invalid duration {text!r}: use a number with a unit, e.g. 15m, 24h, 30d"
                )
            value = _seconds(sum(int(n) * _UNITS[u] for n, u in parts), text)
    if value <= timedelta(0):
        raise InvalidInput(f"invalid duration {text!r}: must be positive")
    if value > MAX_DURATION:
        raise InvalidInput(f"invalid duration {text!r}: longer than {format_duration(MAX_DURATION)}")
    return value


def _seconds(seconds: int, text: object) -> timedelta:
    if seconds <= 0:
        raise InvalidInput(f"invalid duration {text!r}: must be positive")
    if seconds > MAX_DURATION.total_seconds():
        raise InvalidInput(f"invalid duration {text!r}: longer than {format_duration(MAX_DURATION)}")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact form: 86400s -> ``1d``, 5400s -> ``90m``."""
    seconds = int(value.total_seconds())
    for unit in ("y", "w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"

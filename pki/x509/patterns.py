"""Operator patterns (profile CN/SAN patterns, token CN patterns) as linear-time regular expressions.

Patterns come from operators but are matched against names sent by anyone who can reach the
enrollment API, so a pattern that backtracks (``(a+)+$``) must not be able to hold a worker. They
run on RE2, whose matching time is linear in the input: backreferences and look-around, which need
backtracking, are refused when the pattern is made.
"""

from __future__ import annotations

import functools
from typing import Protocol

import re2

from pki.errors import InvalidInput

# Never fall back silently to Python's backtracking engine for a pattern RE2 cannot run.
re2.set_fallback_notification(re2.FALLBACK_EXCEPTION)


class Pattern(Protocol):
    def fullmatch(self, text: str) -> object | None: ...


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str) -> Pattern:
    compiled: Pattern = re2.compile(pattern)
    return compiled


def compile_pattern(pattern: str, what: str) -> Pattern:
    """``pattern`` compiled for full matches; InvalidInput naming ``what`` when it is not a valid
    linear-time pattern. Compiled patterns are cached: checking a name costs one look-up."""
    try:
        return _compiled(pattern)
    except Exception as exc:  # re2 raises re.error or its own error, depending on the construct
        reason = str(exc) or type(exc).__name__
        raise InvalidInput(f"invalid {what} regular expression {pattern!r}: {reason} "
                           "(patterns run in linear time: no backreferences or look-around)") from exc


def fullmatch(pattern: str, text: str) -> bool:
    """Whether ``text`` matches all of ``pattern`` (already checked valid)."""
    return _compiled(pattern).fullmatch(text) is not None

"""``pki.x509.durations``: every text either parses to a positive, bounded duration or is refused
with ``InvalidInput``; nothing else escapes (no OverflowError, no ValueError)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pki.errors import InvalidInput
from pki.x509.durations import MAX_DURATION, format_duration, parse_duration


@pytest.mark.parametrize(("text", "expected"), [
    ("90s", timedelta(seconds=90)), ("15m", timedelta(minutes=15)), ("1d12h", timedelta(hours=36)),
    ("3600", timedelta(hours=1)), (7200, timedelta(hours=2)), ("1000y", MAX_DURATION),
])
def test_parses(text: str | int, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["99999999999999d", "9" * 30, 10**20, "1001y", "9" * 5000, "0s", "-5m", "1x", ""])
def test_refuses_with_a_clear_error(text: str | int) -> None:
    with pytest.raises(InvalidInput, match="invalid duration"):
        parse_duration(text)


@given(st.one_of(st.text(max_size=80), st.integers(), st.from_regex(r"\A(\d{1,25}[smhdwy]){1,4}\Z")))
def test_any_input_parses_or_is_refused(text: str | int) -> None:
    try:
        value = parse_duration(text)
    except InvalidInput:
        return
    assert timedelta(0) < value <= MAX_DURATION
    assert parse_duration(format_duration(value)) == value

"""Operator patterns run in linear time: a pattern that would backtrack catastrophically in Python's
``re`` cannot hold a worker, and constructs that need backtracking are refused when made."""

from __future__ import annotations

import pytest

from pki.ca.authority import CertificateAuthority
from pki.ca.tokens import EnrollmentToken, TokenStore
from pki.errors import InvalidInput, PolicyViolation
from pki.x509.patterns import compile_pattern, fullmatch
from pki.x509.profiles import Profile

EVIL = "(a+)+$"
ATTACK = "a" * 40 + "!"  # hours of backtracking for Python's re; microseconds for a linear engine


@pytest.mark.timeout(20)
def test_a_backtracking_pattern_answers_at_once() -> None:
    assert fullmatch(EVIL, ATTACK) is False
    assert fullmatch(EVIL, "a" * 40) is True


@pytest.mark.timeout(20)
def test_profile_and_token_patterns_refuse_the_attack_without_hanging(ca: CertificateAuthority) -> None:
    ca.add_profile(Profile(name="evil", cn_pattern=EVIL))
    with pytest.raises(PolicyViolation):
        ca.issue("evil", cn=ATTACK)
    tokens = TokenStore(ca)
    record = tokens.create("evil", cn_pattern=EVIL).record
    assert isinstance(record, EnrollmentToken)
    assert record.allows_cn(ATTACK) is False


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=web)web-1", r"(?<!x)web", "(unclosed"])
def test_patterns_that_need_backtracking_or_do_not_parse_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidInput, match="invalid CN regular expression"):
        compile_pattern(pattern, "CN")
    with pytest.raises(InvalidInput, match="regular expression"):
        Profile(name="p", cn_pattern=pattern)


@pytest.mark.parametrize(("pattern", "text", "matches"), [
    (r"web-[0-9]+", "web-12", True), (r"web-[0-9]+", "web-12x", False),
    (r"[a-z0-9-]+\.example\.com", "a.example.com", True), (r"(?i)WEB", "web", True),
])
def test_full_matches(pattern: str, text: str, matches: bool) -> None:
    assert fullmatch(pattern, text) is matches

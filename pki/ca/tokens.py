"""Enrollment and operator tokens: created once, stored hashed, redeemed atomically.

A token is ``rpk_e_<id>.<secret>`` (enrollment) or ``rpk_o_<id>.<secret>`` (operator API). The id
is public (listings, audit); the secret is 32 random bytes and is shown once, at creation. Only
SHA-256 of the whole token is stored: the secret has 256 bits of entropy, so a slow password hash
would add nothing but latency. Rows are found by id and the hashes compared in constant time.

Redemption is one conditional ``UPDATE ... SET uses_left = uses_left - 1 WHERE id = ? AND
token_hash = ? AND uses_left > 0 AND expires_at > now AND revoked_at IS NULL`` run inside the
transaction that records the certificate (``CertificateAuthority.issue(within=...)``). The database
serialises concurrent redemptions (SQLite: one writer; PostgreSQL: the row lock, after which the
``WHERE`` is re-evaluated), so a token is never redeemed more often than it has uses, whatever the
number of workers, and a refused or failed issuance rolls the redemption back with the certificate.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, NamedTuple

from sqlalchemy.engine import Engine

from pki.ca.authority import CertificateAuthority, local_actor
from pki.errors import Conflict, Forbidden, InvalidInput, NotFound, RapkiError, Unauthenticated
from pki.store import tokens as token_rows
from pki.store.statements import Transaction
from pki.store.times import utc, utc_or_none
from pki.x509.patterns import compile_pattern, fullmatch

ENROLL_PREFIX = "rpk_e_"
OPERATOR_PREFIX = "rpk_o_"
_TOKEN_RE = re.compile(r"rpk_([eo])_([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")
MAX_TOKEN_TTL = timedelta(days=30)
MAX_USES = 100_000


class TokenExpired(Unauthenticated):
    code = "token_expired"


class TokenRevoked(Unauthenticated):
    code = "token_revoked"


class TokenUsed(Conflict):
    code = "token_used"


class InvalidToken(Unauthenticated):
    code = "invalid_token"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token(prefix: str) -> tuple[str, str]:
    token_id = secrets.token_hex(8)
    return token_id, f"{prefix}{token_id}.{secrets.token_urlsafe(32)}"


def parse_token(token: str, kind: str) -> str:
    """The id of a well-formed token of ``kind`` ("e" or "o"); InvalidToken otherwise."""
    match = _TOKEN_RE.fullmatch(token.strip())
    if match is None or match.group(1) != kind:
        what = "an enrollment" if kind == "e" else "an operator"
        raise InvalidToken(f"the bearer token is not {what} token: ask an operator for a fresh one")
    return match.group(2)


class EnrollmentToken(NamedTuple):
    """What is stored about an enrollment token (never its secret). A NamedTuple: one is read on
    every enrollment, at a fifth of a frozen dataclass's cost."""

    id: str
    profile: str
    cn: str
    cn_is_pattern: bool
    uses_left: int
    max_uses: int
    expires_at: datetime
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    last_used_at: datetime | None

    def status(self, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        if self.revoked_at is not None:
            return "revoked"
        if self.uses_left <= 0:
            return "used"
        if self.expires_at <= now:
            return "expired"
        return "active"

    def allows_cn(self, cn: str) -> bool:
        if self.cn_is_pattern:
            return fullmatch(self.cn, cn)
        return hmac.compare_digest(self.cn.encode(), cn.encode())

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "profile": self.profile, "cn": self.cn, "cn_is_pattern": self.cn_is_pattern,
            "uses_left": self.uses_left, "max_uses": self.max_uses, "status": self.status(),
            "expires_at": self.expires_at.isoformat(), "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
        }


@dataclass(frozen=True)
class OperatorToken:
    id: str
    name: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None

    def status(self, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "status": self.status(),
            "created_at": self.created_at.isoformat(), "created_by": self.created_by,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


@dataclass(frozen=True)
class CreatedToken:
    """The token in clear (shown once) and what was stored about it."""

    token: str
    record: EnrollmentToken | OperatorToken


def _enrollment(row: Any) -> EnrollmentToken:
    return EnrollmentToken(
        id=row.id, profile=row.profile, cn=row.cn, cn_is_pattern=bool(row.cn_is_pattern),
        uses_left=row.uses_left, max_uses=row.max_uses, expires_at=utc(row.expires_at),
        created_at=utc(row.created_at), created_by=row.created_by,
        revoked_at=utc_or_none(row.revoked_at), last_used_at=utc_or_none(row.last_used_at),
    )


def _operator(row: Any) -> OperatorToken:
    return OperatorToken(
        id=row.id, name=row.name, created_at=utc(row.created_at), created_by=row.created_by,
        expires_at=utc_or_none(row.expires_at), revoked_at=utc_or_none(row.revoked_at),
    )


class TokenStore:
    """Enrollment and operator tokens of one CA (its database)."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca

    @property
    def engine(self) -> Engine:
        return self.ca.db.engine

    # --- enrollment tokens ----------------------------------------------------------------------
    def create(self, profile: str, *, cn: str | None = None, cn_pattern: str | None = None,
               ttl: timedelta = timedelta(minutes=15), uses: int = 1, actor: str | None = None) -> CreatedToken:
        """A token for ``profile`` bound to an exact CN or a CN pattern (a regex the CN must fully
        match, on top of the profile's own pattern)."""
        if (cn is None) == (cn_pattern is None):
            raise InvalidInput("bind the token to a CN or to a CN pattern (one of them)")
        prof = self.ca.profile(profile)  # NotFound for an unknown profile
        if cn is not None:
            prof.check_cn(cn)  # refuse at creation a token that could never be redeemed
        else:
            compile_pattern(cn_pattern or "", "CN")
        if not timedelta(seconds=30) <= ttl <= MAX_TOKEN_TTL:
            raise InvalidInput("token TTL must be between 30s and 30d: tokens are meant to be short-lived")
        if not 1 <= uses <= MAX_USES:
            raise InvalidInput(f"uses must be between 1 and {MAX_USES}")
        actor = actor or local_actor()
        token_id, token = _new_token(ENROLL_PREFIX)
        now = datetime.now(UTC)
        expires_at = now + ttl
        values: dict[str, Any] = {
            "id": token_id, "token_hash": hash_token(token), "profile": prof.name,
            "cn": cn if cn is not None else cn_pattern, "cn_is_pattern": cn is None,
            "uses_left": uses, "max_uses": uses, "expires_at": expires_at, "created_at": now,
            "created_by": actor, "revoked_at": None, "last_used_at": None,
        }
        with self.engine.begin() as conn:
            token_rows.add_enrollment(conn, values)
            self.ca.audit_in(conn, actor, "token.create", token_id,
                           {"profile": prof.name, "cn": values["cn"], "cn_is_pattern": cn is None,
                            "uses": uses, "expires_at": expires_at.isoformat()})
        return CreatedToken(token, _enrollment(SimpleNamespace(**values)))

    def get(self, token_id: str) -> EnrollmentToken:
        with self.engine.connect() as conn:
            row = token_rows.enrollment(conn, token_id)
        if row is None:
            raise NotFound(f"no enrollment token {token_id}: see 'rapki token list'")
        return _enrollment(row)

    def list_tokens(self, *, include_inactive: bool = False) -> list[EnrollmentToken]:
        with self.engine.connect() as conn:
            rows = token_rows.enrollments(conn)
        tokens = [_enrollment(r) for r in rows]
        return tokens if include_inactive else [t for t in tokens if t.status() == "active"]

    def revoke(self, token_id: str, *, actor: str | None = None) -> EnrollmentToken:
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            changed = token_rows.revoke_enrollment(conn, token_id, now)
            if changed:
                self.ca.audit_in(conn, actor, "token.revoke", token_id, None)
        record = self.get(token_id)
        if not changed and record.revoked_at is None:  # pragma: no cover - raced with a delete
            raise NotFound(f"no enrollment token {token_id}")
        return record

    def authenticate(self, token: str) -> EnrollmentToken:
        """The enrollment token a bearer presents, if it can still be redeemed. Read-only: nothing
        is consumed here (see ``redeemer``)."""
        token_id = parse_token(token, "e")
        row = self.ca.db.query(token_rows.SELECT_ENROLLMENT, {"token_id": token_id})
        if row is None or not hmac.compare_digest(row[1], hash_token(token.strip())):
            raise InvalidToken("unknown enrollment token: ask an operator for a fresh one")
        (token_id, _hash, profile, cn, cn_is_pattern, uses_left, max_uses, expires_at, created_at, created_by,
         revoked_at, last_used_at) = row
        record = EnrollmentToken(
            id=token_id, profile=profile, cn=cn, cn_is_pattern=bool(cn_is_pattern), uses_left=uses_left,
            max_uses=max_uses, expires_at=utc(expires_at), created_at=utc(created_at),
            created_by=created_by, revoked_at=utc_or_none(revoked_at), last_used_at=utc_or_none(last_used_at))
        status = record.status()
        if status == "revoked":
            raise TokenRevoked("this enrollment token was revoked: ask an operator for a fresh one")
        if status == "used":
            raise TokenUsed("this enrollment token was already used: ask an operator for a fresh one")
        if status == "expired":
            raise TokenExpired(f"this enrollment token expired at {record.expires_at:%Y-%m-%d %H:%M:%S}Z: "
                               "ask an operator for a fresh one")
        return record

    @staticmethod
    def check_binding(record: EnrollmentToken, profile: str | None, cn: str) -> None:
        """Forbidden unless the token was made for this profile and this CN."""
        if profile is not None and profile != record.profile:
            raise Forbidden(f"this token is for profile {record.profile!r}, not {profile!r}")
        if not record.allows_cn(cn):
            bound = f"CNs matching {record.cn!r}" if record.cn_is_pattern else f"CN {record.cn!r}"
            raise Forbidden(f"this token is for {bound}, not {cn!r}")

    def redeemer(self, token: str) -> Callable[[Transaction], None]:
        """A callback for ``CertificateAuthority.issue(within=...)``: consumes one use of the token
        in the certificate's transaction, or raises (and so rolls the certificate back)."""
        token_id = parse_token(token, "e")
        digest = hash_token(token.strip())

        def redeem(tx: Transaction) -> None:
            now = datetime.now(UTC)
            changed = tx.run(token_rows.REDEEM, {"token_id": token_id, "digest": digest, "now": now, "used_at": now})
            if changed != 1:  # lost a race with another request (or it expired meanwhile)
                raise TokenUsed("this enrollment token was already used: ask an operator for a fresh one")

        return redeem

    # --- operator tokens --------------------------------------------------------------------------
    def create_operator(self, name: str, *, ttl: timedelta | None = None, actor: str | None = None) -> CreatedToken:
        if not name or len(name) > 255:
            raise InvalidInput("an operator token needs a name (1-255 characters), e.g. the person or system")
        actor = actor or local_actor()
        token_id, token = _new_token(OPERATOR_PREFIX)
        now = datetime.now(UTC)
        expires_at = now + ttl if ttl else None
        values = {"id": token_id, "token_hash": hash_token(token), "name": name, "created_at": now,
                  "created_by": actor, "expires_at": expires_at, "revoked_at": None}
        with self.engine.begin() as conn:
            token_rows.add_operator(conn, values)
            self.ca.audit_in(conn, actor, "operator_token.create", token_id,
                           {"name": name, "expires_at": expires_at.isoformat() if expires_at else None})
        return CreatedToken(token, _operator(SimpleNamespace(**values)))

    def list_operators(self, *, include_inactive: bool = False) -> list[OperatorToken]:
        with self.engine.connect() as conn:
            rows = token_rows.operators(conn)
        tokens = [_operator(r) for r in rows]
        return tokens if include_inactive else [t for t in tokens if t.status() == "active"]

    def revoke_operator(self, token_id: str, *, actor: str | None = None) -> OperatorToken:
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            row = token_rows.operator(conn, token_id)
            if row is None:
                raise NotFound(f"no operator token {token_id}: see 'rapki operator token list'")
            if row.revoked_at is None:
                token_rows.revoke_operator(conn, token_id, now)
                self.ca.audit_in(conn, actor, "operator_token.revoke", token_id, None)
                row = token_rows.operator(conn, token_id)
        return _operator(row)

    def authenticate_operator(self, token: str) -> OperatorToken:
        token_id = parse_token(token, "o")
        with self.engine.connect() as conn:
            row = token_rows.operator(conn, token_id)
        if row is None or not hmac.compare_digest(row.token_hash, hash_token(token.strip())):
            raise InvalidToken("unknown operator token")
        record = _operator(row)
        if record.status() != "active":
            raise Unauthenticated(f"this operator token is {record.status()}: create a new one "
                                  "with 'rapki operator token create'")
        return record


__all__ = [
    "CreatedToken", "EnrollmentToken", "InvalidToken", "OperatorToken", "RapkiError", "TokenExpired",
    "TokenRevoked", "TokenStore", "TokenUsed", "hash_token", "parse_token",
]

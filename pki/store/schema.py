"""Tables. Changes here need a new alembic revision in ``migrations/versions``."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

issuers = Table(
    "issuers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("subject", Text, nullable=False),
    Column("ski", String(64), nullable=False),
    Column("key_type", String(16), nullable=False),
    Column("key_ref", Text, nullable=False),  # path relative to the home, or a pkcs11:/kms: URI
    Column("der", LargeBinary, nullable=False),
    Column("not_before", DateTime(timezone=True), nullable=False),
    Column("not_after", DateTime(timezone=True), nullable=False),
    Column("active", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

certificates = Table(
    "certificates",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("issuer_id", Integer, ForeignKey("issuers.id"), nullable=False),
    Column("serial", String(42), nullable=False),  # lowercase hex, no leading zeros
    Column("subject", Text, nullable=False),
    Column("common_name", String(64), nullable=False),
    Column("sans", JSON, nullable=False),
    Column("profile", String(64), nullable=False),
    Column("key_type", String(16), nullable=False),
    Column("not_before", DateTime(timezone=True), nullable=False),
    Column("not_after", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("revocation_reason", String(32), nullable=True),
    Column("superseded_by", String(42), nullable=True),
    # SHA-256 of the DER. Not indexed: a random-key index costs every issuance a B-tree write, and
    # certificates are found by (serial, issuer) instead.
    Column("fingerprint", String(64), nullable=False),
    Column("der", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # (serial, issuer_id): unique per issuer, and serves look-ups by serial alone.
    UniqueConstraint("serial", "issuer_id", name="uq_certificates_serial_issuer"),
    # Partial: only revoked rows are indexed, so issuing (the hot path) never touches it; CRL
    # builds read it, so their cost follows the revoked certificates, not the inventory.
    Index("ix_certificates_revoked", "issuer_id", "not_after",
          sqlite_where=text("revoked_at IS NOT NULL"), postgresql_where=text("revoked_at IS NOT NULL")),
    # Pruning by expiry and listing by it (revision 0005). Listing by profile or name scans, which
    # is fine for an operator command (docs/benchmarks.md, the inventory at scale).
    Index("ix_certificates_not_after", "not_after"),
)

crl_state = Table(
    "crl_state",
    metadata,
    Column("issuer_id", Integer, ForeignKey("issuers.id"), primary_key=True),
    Column("crl_number", BigInteger, nullable=False, default=0),
    Column("this_update", DateTime(timezone=True), nullable=True),
    Column("next_update", DateTime(timezone=True), nullable=True),
    Column("entries", Integer, nullable=False, default=0),
    Column("der", LargeBinary, nullable=True),  # the last CRL built
)

profiles = Table(
    "profiles",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("spec", JSON, nullable=False),  # pki.x509.profiles.Profile.to_dict()
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    # The entry number in the hash chain: 1, 2, 3... with no gaps, given by ``audit_chain`` (see
    # ``pki.store.audit``), never by the database's own sequence.
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(255), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(255), nullable=False),
    Column("details", JSON, nullable=True),  # never secrets; ordered by id (append-only)
    Column("prev_hash", String(64), nullable=False),  # the previous entry's hash (pki.auditchain)
    Column("hash", String(64), nullable=False),
)

# One row (id 1): the newest audit entry's number and hash. Every writer advances it in the
# transaction that appends the entry; its row lock is what makes concurrent writers one chain.
audit_chain = Table(
    "audit_chain",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

enrollment_tokens = Table(
    "enrollment_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("profile", String(64), nullable=False),
    Column("cn", String(255), nullable=False),
    Column("cn_is_pattern", Boolean, nullable=False),
    Column("uses_left", Integer, nullable=False),
    Column("max_uses", Integer, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(255), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
)

operator_tokens = Table(
    "operator_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("name", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(255), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

crl_publications = Table(
    "crl_publications",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("issuer_id", Integer, ForeignKey("issuers.id"), nullable=False),
    Column("trust_anchor_arn", String(255), nullable=False),
    Column("crl_id", String(64), nullable=False),
    Column("crl_arn", String(255), nullable=True),
    Column("crl_name", String(255), nullable=False),
    Column("crl_number", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=False),
    # The audit chain's head when this was recorded (the crl.publish entry included): a copy of
    # the head outside the log, to check the log against (``rapki audit verify``).
    Column("audit_seq", Integer, nullable=True),
    Column("audit_hash", String(64), nullable=True),
    Index("ix_crl_publications_anchor", "trust_anchor_arn", "issuer_id"),
)

# The API's rate-limit counters and seen request signatures, for servers on PostgreSQL: every
# replica counts in these rows (``pki.store.ratelimits``). A SQLite home keeps them in a file of
# its own beside the CA database instead (``HOME/api-state.db``), and leaves these tables empty.
rate_counters = Table(
    "rate_counters",
    metadata,
    Column("key", Text, primary_key=True),
    Column("window", BigInteger, primary_key=True, autoincrement=False),  # Unix time // the limit's period
    Column("count", Integer, nullable=False),
    Column("expires", BigInteger, nullable=False),  # Unix seconds: when the window ends
    Index("ix_rate_counters_expires", "expires"),
)

seen_signatures = Table(
    "seen_signatures",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("expires", BigInteger, nullable=False),  # Unix seconds: past it the row may be dropped
    Index("ix_seen_signatures_expires", "expires"),
)

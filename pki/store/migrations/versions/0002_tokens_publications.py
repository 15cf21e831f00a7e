"""Enrollment and operator tokens (stored hashed), and Roles Anywhere CRL publications.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

UTC_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.String(32), primary_key=True),  # public id, shown in listings
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),  # SHA-256 hex, never the token
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("cn", sa.String(255), nullable=False),  # exact CN, or a regex when cn_is_pattern
        sa.Column("cn_is_pattern", sa.Boolean, nullable=False),
        sa.Column("uses_left", sa.Integer, nullable=False),
        sa.Column("max_uses", sa.Integer, nullable=False),
        sa.Column("expires_at", UTC_TS, nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("revoked_at", UTC_TS, nullable=True),
        sa.Column("last_used_at", UTC_TS, nullable=True),
    )
    op.create_table(
        "operator_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("expires_at", UTC_TS, nullable=True),
        sa.Column("revoked_at", UTC_TS, nullable=True),
    )
    op.create_table(
        "crl_publications",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("issuer_id", sa.Integer, sa.ForeignKey("issuers.id"), nullable=False),
        sa.Column("trust_anchor_arn", sa.String(255), nullable=False),
        sa.Column("crl_id", sa.String(64), nullable=False),
        sa.Column("crl_arn", sa.String(255), nullable=True),
        sa.Column("crl_name", sa.String(255), nullable=False),
        sa.Column("crl_number", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("published_at", UTC_TS, nullable=False),
    )
    op.create_index("ix_crl_publications_anchor", "crl_publications", ["trust_anchor_arn", "issuer_id"])


def downgrade() -> None:
    op.drop_table("crl_publications")
    op.drop_table("operator_tokens")
    op.drop_table("enrollment_tokens")

"""Initial schema: issuers, certificates, CRL state, profiles, audit log.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

UTC_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "issuers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("ski", sa.String(64), nullable=False),
        sa.Column("key_type", sa.String(16), nullable=False),
        sa.Column("key_ref", sa.Text, nullable=False),
        sa.Column("der", sa.LargeBinary, nullable=False),
        sa.Column("not_before", UTC_TS, nullable=False),
        sa.Column("not_after", UTC_TS, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
    )
    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("issuer_id", sa.Integer, sa.ForeignKey("issuers.id"), nullable=False),
        sa.Column("serial", sa.String(42), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("common_name", sa.String(64), nullable=False),
        sa.Column("sans", sa.JSON, nullable=False),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("key_type", sa.String(16), nullable=False),
        sa.Column("not_before", UTC_TS, nullable=False),
        sa.Column("not_after", UTC_TS, nullable=False),
        sa.Column("revoked_at", UTC_TS, nullable=True),
        sa.Column("revocation_reason", sa.String(32), nullable=True),
        sa.Column("superseded_by", sa.String(42), nullable=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("der", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.UniqueConstraint("serial", "issuer_id", name="uq_certificates_serial_issuer"),
    )
    revoked_only = sa.text("revoked_at IS NOT NULL")
    op.create_index("ix_certificates_revoked", "certificates", ["issuer_id", "not_after"],
                    sqlite_where=revoked_only, postgresql_where=revoked_only)
    op.create_table(
        "crl_state",
        sa.Column("issuer_id", sa.Integer, sa.ForeignKey("issuers.id"), primary_key=True),
        sa.Column("crl_number", sa.BigInteger, nullable=False),
        sa.Column("this_update", UTC_TS, nullable=True),
        sa.Column("next_update", UTC_TS, nullable=True),
        sa.Column("entries", sa.Integer, nullable=False),
        sa.Column("der", sa.LargeBinary, nullable=True),
    )
    op.create_table(
        "profiles",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("updated_at", UTC_TS, nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", UTC_TS, nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("details", sa.JSON, nullable=True),
    )


def downgrade() -> None:
    for table in ("audit_log", "profiles", "crl_state", "certificates", "issuers"):
        op.drop_table(table)

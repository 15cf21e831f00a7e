"""The API's rate-limit counters and seen request signatures in the CA database, so that API
replicas on PostgreSQL share them (a SQLite home keeps its per-host ``api-state.db``).

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "rate_counters",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("window", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("expires", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_rate_counters_expires", "rate_counters", ["expires"])
    op.create_table(
        "seen_signatures",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("expires", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_seen_signatures_expires", "seen_signatures", ["expires"])


def downgrade() -> None:
    op.drop_index("ix_seen_signatures_expires", "seen_signatures")
    op.drop_table("seen_signatures")
    op.drop_index("ix_rate_counters_expires", "rate_counters")
    op.drop_table("rate_counters")

"""An index on the certificates' notAfter: expiry-based pruning (``rapki prune``) and listing by
expiry (``rapki list --expiring-within``, ``--status expired``) find their rows through it instead
of reading the whole inventory. Issuance appends near its right-hand end (notAfter grows with
time), so it costs an issuance little.

Revision ID: 0005
"""

from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_index("ix_certificates_not_after", "certificates", ["not_after"])


def downgrade() -> None:
    op.drop_index("ix_certificates_not_after", "certificates")

"""An index on the certificates' notAfter: expiry-based pruning (``rapki prune``) and listing by
expiry (``rapki list --expiring-within``, ``--status expired``) find their rows through it instead
of reading the whole inventory. Issuance appends near its right-hand end (notAfter grows with
time), so it costs an issuance little.

Numbered 0006 so that 0005 stays free for the revision another change adds beside this one; on
this branch it follows 0004.

Revision ID: 0006
"""

from alembic import op

revision = "0006"
down_revision = "0004"


def upgrade() -> None:
    op.create_index("ix_certificates_not_after", "certificates", ["not_after"])


def downgrade() -> None:
    op.drop_index("ix_certificates_not_after", "certificates")

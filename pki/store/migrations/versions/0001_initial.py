"""Initial schema: issuers, certificates, CRL state, profiles, audit log.

Revision ID: 0001
"""

from alembic import op

from pki.store.schema import audit_log, certificates, crl_state, issuers, profiles

revision = "0001"
down_revision = None


def upgrade() -> None:
    bind = op.get_bind()
    for table in (issuers, certificates, crl_state, profiles, audit_log):
        table.create(bind, checkfirst=True)


def downgrade() -> None:
    bind = op.get_bind()
    for table in (audit_log, profiles, crl_state, certificates, issuers):
        table.drop(bind, checkfirst=True)

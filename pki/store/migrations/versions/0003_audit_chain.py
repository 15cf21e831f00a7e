"""The audit log as a hash chain: each entry's previous hash and own hash, the chain's head row,
and the head recorded with each CRL publication. Existing entries are numbered 1, 2, 3... in
their order and chained (see ``pki.auditchain``).

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

from pki.auditchain import GENESIS, content_digest, entry_hash

revision = "0003"
down_revision = "0002"

HASH = sa.String(64)


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("prev_hash", HASH, nullable=True))
        batch.add_column(sa.Column("hash", HASH, nullable=True))
    seq, prev = _chain_existing_entries()
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column("prev_hash", existing_type=HASH, nullable=False)
        batch.alter_column("hash", existing_type=HASH, nullable=False)
    chain = op.create_table(
        "audit_chain",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("prev_hash", HASH, nullable=False),
        sa.Column("hash", HASH, nullable=False),
    )
    op.bulk_insert(chain, [{"id": 1, "seq": seq, "prev_hash": prev[0], "hash": prev[1]}])
    with op.batch_alter_table("crl_publications") as batch:
        batch.add_column(sa.Column("audit_seq", sa.Integer, nullable=True))
        batch.add_column(sa.Column("audit_hash", HASH, nullable=True))


def _chain_existing_entries() -> tuple[int, tuple[str, str]]:
    """Number the entries 1..n in id order and hash them; the last entry's number and its
    (previous hash, hash), or (0, (GENESIS, GENESIS)) for an empty log."""
    log = sa.table("audit_log", sa.column("id", sa.Integer), sa.column("at", sa.DateTime(timezone=True)),
                   sa.column("actor", sa.String), sa.column("action", sa.String), sa.column("target", sa.String),
                   sa.column("details", sa.JSON), sa.column("prev_hash", HASH), sa.column("hash", HASH))
    conn = op.get_bind()
    rows = conn.execute(sa.select(log.c.id, log.c.at, log.c.actor, log.c.action, log.c.target, log.c.details)
                        .order_by(log.c.id)).all()
    prev, digest = GENESIS, GENESIS
    updates = []
    for seq, row in enumerate(rows, 1):
        digest = entry_hash(prev, seq, content_digest(row.at, row.actor, row.action, row.target, row.details))
        updates.append({"old_id": row.id, "new_id": seq, "prev": prev, "digest": digest})
        prev = digest
    if updates:
        # In ascending order each new number is free: it is at most the old one, and any row
        # that held it has been renumbered already.
        conn.execute(log.update().where(log.c.id == sa.bindparam("old_id"))
                     .values(id=sa.bindparam("new_id"), prev_hash=sa.bindparam("prev"), hash=sa.bindparam("digest")),
                     updates)
    last_prev = updates[-1]["prev"] if updates else GENESIS
    return len(updates), (last_prev, digest)


def downgrade() -> None:
    with op.batch_alter_table("crl_publications") as batch:
        batch.drop_column("audit_hash")
        batch.drop_column("audit_seq")
    op.drop_table("audit_chain")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("hash")
        batch.drop_column("prev_hash")

"""The pool CA in the database, so that every server of a pool signs with the same CA: its
certificate, and its key sealed with the pool's CA passphrase (control/ca_store.py).

Revision ID: 0014_pool_ca
Revises: 0013_idempotency
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0014_pool_ca"
down_revision = "0013_idempotency"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pool_ca",
        # One row: the primary key is the lock two first starts race for.
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("cert_pem", sa.Text, nullable=False),
        sa.Column("sealed_key", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pool_ca")

"""Each operation names the control-plane process that runs it (its data dir's instance id), so
that a restart fails only the unfinished operations it owned, never those of the other servers
or hosts sharing the database.

Revision ID: 0016_operation_owner
Revises: 0015_cloud_init
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0016_operation_owner"
down_revision = "0015_cloud_init"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        # NULL: written before owners existed; a start still fails those (nobody carries them).
        batch.add_column(sa.Column("owner", sa.String(64), nullable=True))
        batch.create_index("ix_operations_owner_status", ["owner", "status"])


def downgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.drop_index("ix_operations_owner_status")
        batch.drop_column("owner")

"""A VM created with `vm create --host NAME` remembers its pin, so that nothing that plans
moves (the rebalancer) takes it elsewhere.

Revision ID: 0017_vm_pin
Revises: 0016_operation_owner
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0017_vm_pin"
down_revision = "0016_operation_owner"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("pinned_host", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("pinned_host")

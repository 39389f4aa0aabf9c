"""When a VM last started running (`vm list` shows its uptime from it); NULL while it is not.

Revision ID: 0011_started
Revises: 0010_guests
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_started"
down_revision = "0010_guests"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("started_at")

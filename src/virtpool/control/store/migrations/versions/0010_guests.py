"""A VM's own boot timeout (resolved from its image at create) and how its last stop ended
(guest agent, ACPI, killed, or the guest itself).

Revision ID: 0010_guests
Revises: 0009_networks
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_guests"
down_revision = "0009_networks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("boot_timeout_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("stopped_by", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("stopped_by")
        batch.drop_column("boot_timeout_s")

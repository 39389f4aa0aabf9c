"""The usage history in the database, so that it survives a restart and is the same on every
server sharing the pool: VM samples (kept for the retention) and each host's last disk use.

Revision ID: 0018_usage
Revises: 0017_vm_pin
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0018_usage"
down_revision = "0017_vm_pin"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_samples",
        sa.Column("vm_id", sa.String(32), primary_key=True),
        sa.Column("t", sa.Float, primary_key=True, index=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("counters", sa.JSON, nullable=False),
        sa.Column("point", sa.JSON, nullable=False),
    )
    op.create_table(
        "host_samples",
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("t", sa.Float, nullable=False),
        sa.Column("disk_used_mib", sa.Float, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("host_samples")
    op.drop_table("usage_samples")

"""A VM's cloud-init seed configuration (user-data, SSH keys, hostname, network config).

Revision ID: 0015_cloud_init
Revises: 0014_pool_ca
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0015_cloud_init"
down_revision = "0014_pool_ca"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("cloud_init", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("cloud_init")

"""A host's VXLAN address when no agent URL gives it: the host of `virtpool up` (its agent runs
in process) takes part in networks that span hosts through it (`virtpool up --vtep ADDR`).

Revision ID: 0020_host_vtep
Revises: 0019_secgroups
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0020_host_vtep"
down_revision = "0019_secgroups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("vtep", sa.String(45), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("vtep")

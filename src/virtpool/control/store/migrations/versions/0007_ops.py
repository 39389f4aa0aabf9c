"""An index on VM names (and ids): `GET /vms/{name}` looks a VM up by name across projects (an
admin's view), and `GET /vms` pages in (name, id) order from a cursor; the (project, name)
unique index serves neither, and without this both scan the table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_vms_name", "vms", ["name", "id"])


def downgrade() -> None:
    op.drop_index("ix_vms_name", table_name="vms")

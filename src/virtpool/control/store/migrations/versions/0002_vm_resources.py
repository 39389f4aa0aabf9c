"""VM resource limits (balloon ceiling, CPU cap and weight, disk throttling) and the VM's slot.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("max_memory_mib", sa.Integer, nullable=True))
        batch.add_column(sa.Column("cpu_cap_pct", sa.Integer, nullable=True))
        batch.add_column(sa.Column("cpu_weight", sa.Integer, nullable=False, server_default="100"))
        batch.add_column(sa.Column("disk_iops", sa.Integer, nullable=True))
        batch.add_column(sa.Column("disk_bps", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("cpu_affinity", sa.JSON, nullable=True))
        batch.add_column(sa.Column("slot", sa.Integer, nullable=True))
    op.execute("UPDATE vms SET max_memory_mib = memory_mib WHERE max_memory_mib IS NULL")
    # Existing VMs get distinct slots from their order of creation.
    connection = op.get_bind()
    ids = [row[0] for row in connection.execute(sa.text("SELECT id FROM vms ORDER BY created_at"))]
    for slot, vm_id in enumerate(ids):
        connection.execute(sa.text("UPDATE vms SET slot = :slot WHERE id = :id"), {"slot": slot, "id": vm_id})
    with op.batch_alter_table("vms") as batch:
        batch.alter_column("max_memory_mib", nullable=False)
        batch.alter_column("slot", nullable=False)
        batch.create_unique_constraint("uq_vms_slot", ["slot"])


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_constraint("uq_vms_slot", type_="unique")
        for column in ("slot", "cpu_affinity", "disk_bps", "disk_iops", "cpu_weight", "cpu_cap_pct", "max_memory_mib"):
            batch.drop_column(column)

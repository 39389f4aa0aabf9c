"""Virtual networks of projects and the NICs of VMs on them (issue 11).

Revision ID: 0009_networks
Revises: 0008_leases
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op


revision = "0009_networks"
down_revision = "0008_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "networks",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("project_id", sa.String(32), sa.ForeignKey("projects.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("subnet", sa.String(18), nullable=False),
        sa.Column("nat", sa.Boolean, nullable=False),
        sa.Column("vni", sa.Integer, nullable=False, unique=True),
        sa.Column("mtu", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("project_id", "name", name="uq_networks_project_name"),
    )
    op.create_table(
        "nics",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("vm_id", sa.String(32), sa.ForeignKey("vms.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("network_id", sa.String(32),
                  sa.ForeignKey("networks.id", ondelete="RESTRICT"), nullable=False, index=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("mac", sa.String(17), nullable=False, unique=True),
        sa.Column("address", sa.String(15), nullable=False),
        sa.UniqueConstraint("network_id", "address", name="uq_nics_network_address"),
        sa.UniqueConstraint("vm_id", "position", name="uq_nics_vm_position"),
    )


def downgrade() -> None:
    op.drop_table("nics")
    op.drop_table("networks")

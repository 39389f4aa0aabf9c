"""Security groups of projects, their rules, and the VMs in them (issue 11, item 5).

Revision ID: 0019_secgroups
Revises: 0018_usage
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0019_secgroups"
down_revision = "0018_usage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secgroups",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("project_id", sa.String(32), sa.ForeignKey("projects.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("project_id", "name", name="uq_secgroups_project_name"),
    )
    op.create_table(
        "secgroup_rules",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("secgroup_id", sa.String(32),
                  sa.ForeignKey("secgroups.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("direction", sa.String(7), nullable=False),
        sa.Column("proto", sa.String(4), nullable=False),
        sa.Column("port_min", sa.Integer, nullable=True),
        sa.Column("port_max", sa.Integer, nullable=True),
        sa.Column("remote_cidr", sa.String(18), nullable=True),
        sa.Column("remote_group_id", sa.String(32),
                  sa.ForeignKey("secgroups.id"), nullable=True, index=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "vm_secgroups",
        sa.Column("vm_id", sa.String(32), sa.ForeignKey("vms.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("secgroup_id", sa.String(32),
                  sa.ForeignKey("secgroups.id"), primary_key=True,
                  index=True),
        sa.Column("position", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("vm_secgroups")
    op.drop_table("secgroup_rules")
    op.drop_table("secgroups")

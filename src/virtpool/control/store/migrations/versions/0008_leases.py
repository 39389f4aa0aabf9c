"""Host leases (epoch, expiry) apart from the usage figures heartbeats report, the leader of the
background loops, the agent's address and version on each host, and a VM's known state while
its host is unreachable.

Revision ID: 0008_leases
Revises: 0007
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op


revision = "0008_leases"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "host_leases",
        sa.Column("host", sa.String(255), sa.ForeignKey("hosts.name", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("renewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lapsed", sa.Boolean, nullable=False),
        sa.Column("resume_state", sa.String(16), nullable=True),
    )
    op.create_table(
        "host_usage",
        sa.Column("host", sa.String(255), sa.ForeignKey("hosts.name", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("running_vms", sa.Integer, nullable=False),
        sa.Column("memory_used_mib", sa.BigInteger, nullable=False),
        sa.Column("cpu_load_pct", sa.Float, nullable=False),
        sa.Column("disk_free_mib", sa.BigInteger, nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "leaders",
        sa.Column("role", sa.String(32), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("address", sa.String(255), nullable=True))
        batch.add_column(sa.Column("agent_version", sa.String(32), nullable=True))
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("known_state", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("known_state")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("agent_version")
        batch.drop_column("address")
    op.drop_table("leaders")
    op.drop_table("host_usage")
    op.drop_table("host_leases")

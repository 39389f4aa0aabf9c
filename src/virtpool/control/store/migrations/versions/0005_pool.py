"""Projects with quotas, hosts with claims, placement groups, operations; project on VMs,
tokens, events and audit.

Usage counters live on the project and host rows so that a quota check or a host claim is one
conditional UPDATE, atomic on SQLite and PostgreSQL alike; the host's generation lets a claim
made on stale figures fail and be retried.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

DEFAULT_PROJECT = "default"


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("quota_cpus", sa.Integer, nullable=True),
        sa.Column("quota_memory_mib", sa.BigInteger, nullable=True),
        sa.Column("quota_disk_mib", sa.BigInteger, nullable=True),
        sa.Column("quota_vms", sa.Integer, nullable=True),
        sa.Column("used_cpus", sa.Integer, nullable=False, server_default="0"),
        sa.Column("used_memory_mib", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("used_disk_mib", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("used_vms", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.current_timestamp()),
    )
    op.execute(
        "INSERT INTO projects (id, name, used_cpus, used_memory_mib, used_disk_mib, used_vms) "
        f"SELECT '{DEFAULT_PROJECT}', '{DEFAULT_PROJECT}', "
        "COALESCE(SUM(cpus), 0), COALESCE(SUM(max_memory_mib), 0), COALESCE(SUM(disk_mib), 0), "
        "COUNT(*) FROM vms"
    )
    op.create_table(
        "hosts",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("cpus", sa.Integer, nullable=False),
        sa.Column("memory_mib", sa.BigInteger, nullable=False),
        sa.Column("disk_mib", sa.BigInteger, nullable=False),
        sa.Column("reserved_cpus", sa.Integer, nullable=False, server_default="0"),
        sa.Column("reserved_memory_mib", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reserved_disk_mib", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cpu_ratio", sa.Float, nullable=False, server_default="4.0"),
        sa.Column("memory_ratio", sa.Float, nullable=False, server_default="1.0"),
        sa.Column("disk_ratio", sa.Float, nullable=False, server_default="1.0"),
        sa.Column("balloon", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="up"),
        sa.Column("accel", sa.String(8), nullable=False, server_default="tcg"),
        sa.Column("allowed_projects", sa.JSON, nullable=True),
        sa.Column("used_cpus", sa.Integer, nullable=False, server_default="0"),
        sa.Column("used_memory_mib", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("used_disk_mib", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.current_timestamp()),
    )
    op.create_table(
        "groups",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("project_id", sa.String(32), sa.ForeignKey("projects.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("policy", sa.String(16), nullable=False),
        sa.Column("hard", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.current_timestamp()),
        sa.UniqueConstraint("project_id", "name", name="uq_groups_project_name"),
    )
    op.create_table(
        "operations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("target", sa.String(255), nullable=True),
        sa.Column("project_id", sa.String(32), nullable=True, index=True),
        sa.Column("actor", sa.String(63), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Integer, nullable=False, server_default="0"),
        sa.Column("message", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )

    naming = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
    unnamed_name_constraint = "vms_name_key" if op.get_bind().dialect.name == "postgresql" else "uq_vms_name"
    with op.batch_alter_table("vms", naming_convention=naming) as batch:
        batch.add_column(sa.Column("project_id", sa.String(32), nullable=False,
                                   server_default=DEFAULT_PROJECT))
        batch.add_column(sa.Column("group_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("required_labels", sa.JSON, nullable=True))
        batch.drop_constraint(unnamed_name_constraint, type_="unique")
        batch.create_unique_constraint("uq_vms_project_name", ["project_id", "name"])
        batch.create_foreign_key("fk_vms_project", "projects", ["project_id"], ["id"])
        batch.create_foreign_key("fk_vms_group", "groups", ["group_id"], ["id"], ondelete="SET NULL")
        batch.create_index("ix_vms_host", ["host"])
        batch.create_index("ix_vms_project_id", ["project_id"])
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("project_id", sa.String(32), nullable=True))
        batch.create_foreign_key("fk_tokens_project", "projects", ["project_id"], ["id"],
                                 ondelete="CASCADE")
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("project_id", sa.String(32), nullable=True))
        batch.create_index("ix_events_project_id", ["project_id"])
    with op.batch_alter_table("audit") as batch:
        batch.add_column(sa.Column("project_id", sa.String(32), nullable=True))
        batch.create_index("ix_audit_project_id", ["project_id"])
    op.execute(f"UPDATE events SET project_id = '{DEFAULT_PROJECT}' WHERE vm IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("audit") as batch:
        batch.drop_index("ix_audit_project_id")
        batch.drop_column("project_id")
    with op.batch_alter_table("events") as batch:
        batch.drop_index("ix_events_project_id")
        batch.drop_column("project_id")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_constraint("fk_tokens_project", type_="foreignkey")
        batch.drop_column("project_id")
    with op.batch_alter_table("vms") as batch:
        batch.drop_index("ix_vms_project_id")
        batch.drop_index("ix_vms_host")
        batch.drop_constraint("fk_vms_group", type_="foreignkey")
        batch.drop_constraint("fk_vms_project", type_="foreignkey")
        batch.drop_constraint("uq_vms_project_name", type_="unique")
        batch.create_unique_constraint("uq_vms_name", ["name"])
        batch.drop_column("required_labels")
        batch.drop_column("group_id")
        batch.drop_column("project_id")
    op.drop_table("operations")
    op.drop_table("groups")
    op.drop_table("hosts")
    op.drop_table("projects")

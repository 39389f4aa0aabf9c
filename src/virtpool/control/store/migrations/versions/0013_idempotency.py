"""Idempotency keys of creates: a retried create with the same key answers with the first one's
VM or operation instead of making a second VM.

Revision ID: 0013_idempotency
Revises: 0012_agents
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_idempotency"
down_revision = "0012_agents"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("project_id", sa.String(32), sa.ForeignKey("projects.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("vm_name", sa.String(63), nullable=False),
        sa.Column("start", sa.Boolean, nullable=False),
        sa.Column("vm_id", sa.String(32), nullable=True),
        sa.Column("operation_id", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")

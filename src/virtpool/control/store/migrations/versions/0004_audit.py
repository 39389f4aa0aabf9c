"""The audit log: every mutating request and every automatic decision, with its outcome.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(63), nullable=False),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("target", sa.String(255), nullable=True),
        sa.Column("outcome", sa.String(255), nullable=False),
    )
    op.create_index("ix_audit_time", "audit", ["time"])


def downgrade() -> None:
    op.drop_index("ix_audit_time", "audit")
    op.drop_table("audit")

"""Events: what the pool did and why (state changes, automatic balloon moves).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(63), nullable=False),
        sa.Column("vm", sa.String(63), nullable=True),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data", sa.JSON, nullable=True),
    )
    op.create_index("ix_events_time", "events", ["time"])


def downgrade() -> None:
    op.drop_index("ix_events_time", "events")
    op.drop_table("events")

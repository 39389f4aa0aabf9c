"""Agents on many hosts: where each host's agent answers, its certificate, its event cursor;
one-time join tokens (hashed) and revoked certificates.

Revision ID: 0008_agents
Revises: 0007
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_agents"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("agent_url", sa.String(255), nullable=True))
        batch.add_column(sa.Column("agent_version", sa.String(32), nullable=True))
        batch.add_column(sa.Column("cert_serial", sa.String(40), nullable=True))
        batch.add_column(sa.Column("event_cursor", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(), nullable=True))
    op.create_table(
        "join_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_by", sa.String(63), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.Column("used_by", sa.String(255), nullable=True),
    )
    op.create_table(
        "revoked_certs",
        sa.Column("serial", sa.String(40), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("revoked_certs")
    op.drop_table("join_tokens")
    with op.batch_alter_table("hosts") as batch:
        for column in ("heartbeat_at", "event_cursor", "cert_serial", "agent_version", "agent_url"):
            batch.drop_column(column)

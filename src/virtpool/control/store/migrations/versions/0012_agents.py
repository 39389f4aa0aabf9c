"""Agents on many hosts: the certificate each host's agent enrolled with and the last of its
events the control plane handled; one-time join tokens (hashed) and revoked certificates.
(Where the agent answers and its version are 0008_leases's ``address`` and ``agent_version``.)

Revision ID: 0012_agents
Revises: 0011_started
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_agents"
down_revision = "0011_started"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("cert_serial", sa.String(40), nullable=True))
        batch.add_column(sa.Column("event_cursor", sa.BigInteger(), nullable=False, server_default="0"))
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
        batch.drop_column("event_cursor")
        batch.drop_column("cert_serial")

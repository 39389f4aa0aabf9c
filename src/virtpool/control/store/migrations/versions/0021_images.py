"""The pool's images in the database, so that every server sharing it shows the same set:
each image's manifest (its files' SHA-256 and sizes), and which servers hold its bytes.

A copy row outlives its image's row on purpose: the server named in it sees that the image was
deleted pool-wide and removes its files (control/images.py's sync round).

Revision ID: 0021_images
Revises: 0020_host_vtep
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0021_images"
down_revision = "0020_host_vtep"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("manifest", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "image_copies",
        sa.Column("image", sa.String(63), primary_key=True),
        sa.Column("server", sa.String(64), primary_key=True),
        sa.Column("url", sa.String(300), nullable=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("image_copies")
    op.drop_table("images")

"""Feeds essays are read from, and the entries each one has delivered.

Revision ID: 0004_feeds
Revises: 0003_claim_index
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004_feeds"
down_revision = "0003_claim_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feed",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("url", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("origin", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("etag", sa.Text(), nullable=True),
        sa.Column("last_modified", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("added_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("first_polled_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("last_polled_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("last_status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_feed_url"), "feed", ["url"], unique=True)
    op.create_table(
        "feedentry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("feed_id", sa.Integer(), nullable=False),
        sa.Column("guid", sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=False),
        sa.Column("essay_id", sa.Integer(), nullable=True),
        sa.Column("skipped_reason", sa.Text(), nullable=True),
        sa.Column("first_seen_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["essay_id"], ["essay.id"]),
        sa.ForeignKeyConstraint(["feed_id"], ["feed.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("feed_id", "guid"),
    )
    op.create_index(op.f("ix_feedentry_essay_id"), "feedentry", ["essay_id"], unique=False)
    op.create_index(op.f("ix_feedentry_feed_id"), "feedentry", ["feed_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_feedentry_feed_id"), table_name="feedentry")
    op.drop_index(op.f("ix_feedentry_essay_id"), table_name="feedentry")
    op.drop_table("feedentry")
    op.drop_index(op.f("ix_feed_url"), table_name="feed")
    op.drop_table("feed")

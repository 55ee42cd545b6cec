"""confirmation_queue: confirmation emails wait in a table and are sent outside web requests

The sign-up form answered an active address at once and mailed everyone else inline, so its
timing and its errors told who was subscribed.

Revision ID: 0005_confirmation_queue
Revises: 0004_feeds
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005_confirmation_queue"
down_revision = "0004_feeds"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "confirmation_request",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("nonce", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("sent_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscriber.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("confirmation_request", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_confirmation_request_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_confirmation_request_subscriber_id"), ["subscriber_id"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("confirmation_request", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_confirmation_request_subscriber_id"))
        batch_op.drop_index(batch_op.f("ix_confirmation_request_status"))
    op.drop_table("confirmation_request")

"""bounces: what the bounce mailbox said per delivery, the bounce history, processed messages

Revision ID: 0007_bounces
Revises: 0006_delivery_holder
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007_bounces"
down_revision = "0006_delivery_holder"
branch_labels = None
depends_on = None

_STR = sqlmodel.sql.sqltypes.AutoString
_TIME = sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    with op.batch_alter_table("delivery") as batch:
        batch.add_column(sa.Column("feedback", _STR(length=16), nullable=True))
        batch.add_column(sa.Column("feedback_status", _STR(length=16), nullable=True))
        batch.add_column(sa.Column("feedback_detail", sa.Text(), nullable=True))
        batch.add_column(sa.Column("feedback_at", _TIME(), nullable=True))
        batch.create_index(batch.f("ix_delivery_feedback"), ["feedback"], unique=False)
    op.create_table(
        "bounceevent",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", _STR(length=16), nullable=False),
        sa.Column("email", _STR(length=320), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("issue_id", sa.Integer(), nullable=True),
        sa.Column("delivery_id", sa.Integer(), nullable=True),
        sa.Column("status", _STR(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("matched_by", _STR(length=16), nullable=False),
        sa.Column("report_key", _STR(length=250), nullable=False),
        sa.Column("created_at", _TIME(), nullable=False),
        sa.ForeignKeyConstraint(["delivery_id"], ["delivery.id"]),
        sa.ForeignKeyConstraint(["issue_id"], ["issue.id"]),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscriber.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("bounceevent") as batch:
        for column in ("kind", "subscriber_id", "issue_id", "delivery_id", "report_key", "created_at"):
            batch.create_index(batch.f(f"ix_bounceevent_{column}"), [column], unique=False)
    op.create_table(
        "processedmessage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", _STR(length=250), nullable=False),
        sa.Column("kind", _STR(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("processed_at", _TIME(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("processedmessage") as batch:
        batch.create_index(batch.f("ix_processedmessage_key"), ["key"], unique=True)


def downgrade() -> None:
    op.drop_table("processedmessage")
    op.drop_table("bounceevent")
    with op.batch_alter_table("delivery") as batch:
        batch.drop_index(batch.f("ix_delivery_feedback"))
        for column in ("feedback_at", "feedback_detail", "feedback_status", "feedback"):
            batch.drop_column(column)

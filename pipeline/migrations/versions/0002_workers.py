"""workers: an index on delivery.sent_at, so the global rate limit counts one window, not history

Every rate-limited claim counts the messages sent in the last second/hour/day across all
issues; without this index that count reads every sent row ever recorded.

Revision ID: 0002_workers
Revises: 0002_sending
"""
from __future__ import annotations

from alembic import op

revision = "0002_workers"
down_revision = "0002_sending"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("delivery") as batch:
        batch.create_index(batch.f("ix_delivery_sent_at"), ["sent_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("delivery") as batch:
        batch.drop_index(batch.f("ix_delivery_sent_at"))

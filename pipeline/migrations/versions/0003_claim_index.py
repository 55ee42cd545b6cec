"""An index for claiming an issue's owed deliveries in id order.

Revision ID: 0003_claim_index
Revises: 0002_workers
"""
from __future__ import annotations

from alembic import op

revision = "0003_claim_index"
down_revision = "0002_workers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.create_index("ix_delivery_claim", ["issue_id", "status", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_claim")

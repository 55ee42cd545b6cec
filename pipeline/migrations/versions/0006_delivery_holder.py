"""delivery_holder: which process (host:pid) claimed a delivery, so a stuck `sending` row names it

`sends status` says who holds the rows in flight and until when; a command on the same host
can tell that the holder is gone and mark its rows `unknown` at once instead of at the end of
the lease.

Revision ID: 0006_delivery_holder
Revises: 0005_confirmation_queue
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006_delivery_holder"
down_revision = "0005_confirmation_queue"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(sa.Column("holder", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_column("holder")

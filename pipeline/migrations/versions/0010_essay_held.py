"""essay held: an essay the essayist holds back, taken by no digest by itself until released

Revision ID: 0010_essay_held
Revises: 0009_essay_archive
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_essay_held"
down_revision = "0009_essay_archive"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("essay") as batch:
        batch.add_column(sa.Column("held", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("essay") as batch:
        batch.drop_column("held")

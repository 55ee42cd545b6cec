"""essay archive: an essay published before the newsletter, imported for its related links and
never offered to a digest

Revision ID: 0009_essay_archive
Revises: 0008_issue_intro
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_essay_archive"
down_revision = "0008_issue_intro"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("essay") as batch:
        batch.add_column(sa.Column("archive", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("essay") as batch:
        batch.drop_column("archive")

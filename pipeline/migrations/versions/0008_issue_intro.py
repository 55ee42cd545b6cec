"""issue intro and resend: the editor's note above the essays, and whether readers who had an
essay of the issue get it again

Revision ID: 0008_issue_intro
Revises: 0007_bounces
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_issue_intro"
down_revision = "0007_bounces"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("issue") as batch:
        batch.add_column(sa.Column("intro", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("resend", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("issue") as batch:
        batch.drop_column("resend")
        batch.drop_column("intro")

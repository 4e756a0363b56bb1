"""session store: Claude Code transcripts mirrored into the database

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "session_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_key", sa.String(length=255), nullable=False),
        sa.Column("session_id", sa.String(length=200), nullable=False),
        sa.Column("subpath", sa.String(length=255), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("entry", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "project_key", "session_id", "subpath", "seq", name="uq_session_entries_seq"
        ),
    )


def downgrade() -> None:
    op.drop_table("session_entries")

"""fix watches: after a merge, closing the loop and watching the error

Revision ID: 0006
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fix_watches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("pr_url", sa.Text(), nullable=False),
        sa.Column("merge_commit", sa.String(length=64), nullable=True),
        sa.Column("merged_by", sa.String(length=200), nullable=True),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sentry_issue", sa.String(length=64), nullable=True),
        sa.Column("short_id", sa.String(length=64), nullable=True),
        sa.Column("resolved_how", sa.Text(), nullable=True),
        sa.Column("release", sa.String(length=200), nullable=True),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("events_before", sa.Integer(), nullable=True),
        sa.Column("events_since", sa.Integer(), nullable=True),
        sa.Column("checks", sa.Integer(), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("report_ts", sa.String(length=32), nullable=True),
        sa.Column("replan_task_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"]),
        sa.ForeignKeyConstraint(["replan_task_id"], ["tasks.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_fix_watches_task_id", "fix_watches", ["task_id"])
    op.create_index("ix_fix_watches_status", "fix_watches", ["status"])
    op.create_index("ix_fix_watches_sentry_issue", "fix_watches", ["sentry_issue"])
    op.create_index("ix_fix_watches_short_id", "fix_watches", ["short_id"])


def downgrade() -> None:
    op.drop_table("fix_watches")

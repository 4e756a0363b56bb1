"""dashboard indexes: the week's tasks, someone's tasks, spend since a time

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_created_at", "tasks", ["created_at", "state"])
    op.create_index("ix_tasks_requested_by", "tasks", ["requested_by", "id"])
    op.create_index("ix_agent_runs_started_at", "agent_runs", ["started_at", "cost_usd"])


def downgrade() -> None:
    op.drop_index("ix_agent_runs_started_at", table_name="agent_runs")
    op.drop_index("ix_tasks_requested_by", table_name="tasks")
    op.drop_index("ix_tasks_created_at", table_name="tasks")

"""transient waits: when a job first failed for a passing reason

Revision ID: 0007_transient_since
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_transient_since"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("transient_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("transient_since")

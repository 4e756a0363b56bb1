"""faults: reference text stored whole; the final thread message recorded once posted

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.alter_column(
            "ref_key", existing_type=sa.String(length=200), type_=sa.Text(), nullable=False
        )
        batch_op.add_column(sa.Column("done_message_ts", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("done_message_ts")
        batch_op.alter_column(
            "ref_key", existing_type=sa.Text(), type_=sa.String(length=200), nullable=False
        )

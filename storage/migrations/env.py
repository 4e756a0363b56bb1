"""Alembic environment: Fixbot hands in an open connection (see storage.db.migrate)."""

from alembic import context

from storage.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

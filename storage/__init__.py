"""Fixbot's storage: tables, the database engine, migrations and the durable job queue."""

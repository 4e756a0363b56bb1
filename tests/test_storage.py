"""The database engine and its migrations, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from helpers import free_port
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import MIGRATIONS, create_engine, migrate, ping
from storage.tables import Base


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


def head_revision() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def schema_differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_build_the_schema_from_empty_and_run_twice(engine: AsyncEngine) -> None:
    await migrate(engine)
    await migrate(engine)

    async with engine.connect() as connection:
        tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
        revisions = await connection.execute(text("SELECT version_num FROM alembic_version"))
        versions = [tuple(row) for row in revisions]
    assert tables == {*Base.metadata.tables, "alembic_version"}
    assert versions == [(head_revision(),)]


async def test_the_migrated_schema_matches_the_models(engine: AsyncEngine) -> None:
    await migrate(engine)

    async with engine.connect() as connection:
        differences = await connection.run_sync(schema_differences)

    assert differences == []


async def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'fixbot.db'}")
    try:
        async with engine.connect() as connection:
            journal_mode = await connection.scalar(text("PRAGMA journal_mode"))
            busy_timeout = await connection.scalar(text("PRAGMA busy_timeout"))
            foreign_keys = await connection.scalar(text("PRAGMA foreign_keys"))
    finally:
        await engine.dispose()

    assert (journal_mode, busy_timeout, foreign_keys) == ("wal", 30000, 1)


async def test_ping_answers_true_for_a_live_database(engine: AsyncEngine) -> None:
    assert await ping(engine) is True


async def test_ping_answers_true_for_the_session_postgresql(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    try:
        assert await ping(engine) is True
    finally:
        await engine.dispose()


async def test_ping_answers_false_for_an_unreachable_postgresql() -> None:
    port = free_port()  # nothing listens there
    engine = create_engine(f"postgresql+asyncpg://fixbot@127.0.0.1:{port}/fixbot")
    try:
        assert await ping(engine) is False
    finally:
        await engine.dispose()

"""The database engine: SQLite (WAL, busy timeout) by default, PostgreSQL from DATABASE_URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

MIGRATIONS = Path(__file__).parent / "migrations"
# Replicas that start together migrate one at a time: the first upgrades, the rest find
# the schema current. Any fixed number works; this one spells "FIXB".
MIGRATION_LOCK_KEY = 0x46495842
# Connections besides the steps': Slack handlers, the HTTP server, maintenance, the job
# watcher and the dashboard each hold one briefly, a few at once.
SHARED_CONNECTIONS = 5
BUSY_TIMEOUT_S = 30  # how long a SQLite writer waits for another's lock before failing


def create_engine(url: str, steps: int = 0) -> AsyncEngine:
    """An async engine for `url`, its pool sized for `steps` agent steps running at once
    (each holds a connection now and then: heartbeat, transcript, progress) besides the
    Slack side. Makes the SQLite file's folder when needed."""
    # Enough that no step waits for a connection; the overflow absorbs bursts (many
    # clicks at once) and closes again.
    pool = {"pool_size": steps + SHARED_CONNECTIONS, "max_overflow": steps + SHARED_CONNECTIONS}
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True, **pool)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S}, **pool)
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema up to the newest Alembic revision."""
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":  # replicas share PostgreSQL, not SQLite
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        await connection.run_sync(_upgrade)


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def ping(engine: AsyncEngine) -> bool:
    """Whether the database answers."""
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:  # any driver error means "not reachable"
        return False
    return True

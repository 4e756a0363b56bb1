"""New work, noticed across processes without idle workers claiming in a loop.

Idle workers wait until a job may have become runnable. A `JobWatcher` in each process
learns that from the database: on PostgreSQL a `LISTEN` on the channel that every
enqueue and requeue notifies (`JobQueue` sends the `NOTIFY` in the same transaction),
on SQLite a cheap `PRAGMA data_version` that changes whenever another connection
commits. Either way it then reads which kinds have runnable jobs (a read, not a claim)
and when the next delayed job comes due, and wakes the workers of those kinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from storage.queue import NOTIFY_CHANNEL, QUEUED
from storage.tables import Job, utcnow

log = logging.getLogger(__name__)

# Without any signal the watcher still looks this often: a lost notification (the
# database went away and came back) costs at most this long.
FALLBACK_S = 10.0
SQLITE_CHECK_S = 0.2  # how often SQLite's data_version is read (a pragma, no table read)
RETRY_S = 2.0  # after the database failed the watcher

Wake = Callable[[set[str]], None]
WaitForChange = Callable[[float], Awaitable[None]]


class JobWatcher:
    """Wakes this process's workers when jobs of their kinds may be runnable."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], fallback_s: float = FALLBACK_S
    ) -> None:
        self.sessions = sessions
        self.engine: AsyncEngine = sessions.kw["bind"]
        self.fallback_s = fallback_s

    async def run(self, wake: Wake) -> None:
        """Watch until cancelled; database failures are logged and the watch starts again."""
        watcher = asyncio.current_task()
        assert watcher is not None
        while not watcher.cancelling():  # a cancel a library turned into an error ends it too
            try:
                async with self._changes() as changed:
                    while True:
                        runnable, next_due = await self.runnable()
                        if runnable:
                            wake(runnable)
                        await changed(self._until(next_due))
            except (SQLAlchemyError, OSError) as error:  # the database is away: workers poll
                log.warning("watching for new jobs paused: %s", str(error).splitlines()[0])
            except Exception:
                log.exception("watching for new jobs failed; starting again")
            await asyncio.sleep(RETRY_S)

    async def runnable(self) -> tuple[set[str], datetime | None]:
        """The kinds with a job runnable now, and when the next delayed job comes due."""
        now = utcnow()
        async with self.sessions() as session:
            kinds = await session.scalars(
                select(Job.kind).where(Job.status == QUEUED, Job.run_after <= now).distinct()
            )
            next_due = await session.scalar(
                select(func.min(Job.run_after)).where(Job.status == QUEUED, Job.run_after > now)
            )
            return set(kinds), next_due

    def _until(self, next_due: datetime | None) -> float:
        """Seconds to wait for a signal: until the next delayed job is due, at most the
        fallback."""
        if next_due is None:
            return self.fallback_s
        if next_due.tzinfo is None:  # SQLite hands back naive datetimes, written in UTC
            next_due = next_due.replace(tzinfo=UTC)
        return min(self.fallback_s, max(0.05, (next_due - utcnow()).total_seconds()))

    @contextlib.asynccontextmanager
    async def _changes(self) -> AsyncIterator[WaitForChange]:
        async with self.engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                async with _notifications(connection) as changed:
                    yield changed
            else:
                yield await _data_version_changes(connection)


@contextlib.asynccontextmanager
async def _notifications(connection: AsyncConnection) -> AsyncIterator[WaitForChange]:
    """PostgreSQL: a LISTEN on this connection; `changed` returns at a notification."""
    notified = asyncio.Event()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection  # asyncpg's own connection, where LISTEN lives
    assert driver is not None

    def on_notify(*_args: object) -> None:
        notified.set()

    await driver.add_listener(NOTIFY_CHANNEL, on_notify)

    async def changed(timeout_s: float) -> None:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel that
        # comes as a notification arrives, and the watcher (and the app's stop) never ends.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await notified.wait()
        notified.clear()
        if driver.is_closed():  # a LISTEN on a lost connection hears nothing: start again
            raise ConnectionError("the connection listening for new jobs closed")

    try:
        yield changed
    finally:
        with contextlib.suppress(Exception):  # the connection may be gone already
            await driver.remove_listener(NOTIFY_CHANNEL, on_notify)


async def _data_version_changes(connection: AsyncConnection) -> WaitForChange:
    """SQLite: `changed` returns once another connection (any process) has committed."""

    async def data_version() -> int:
        version = (await connection.exec_driver_sql("PRAGMA data_version")).scalar_one()
        await connection.commit()  # hold no snapshot between looks
        return int(version)

    seen = await data_version()

    async def changed(timeout_s: float) -> None:
        nonlocal seen
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            await asyncio.sleep(min(SQLITE_CHECK_S, max(0.0, deadline - loop.time())))
            version = await data_version()
            if version != seen:
                seen = version
                return

    return changed

"""Idle workers are woken by new work from any process, on SQLite and on PostgreSQL.

Each test runs a `JobWatcher` whose fallback poll is an hour, so what wakes it can only
be the database's signal (a NOTIFY, or SQLite's data_version), and adds the work through
an engine of its own: the connections another process would use.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from test_queue import add_task, enqueue

from storage.db import create_engine, sessionmaker
from storage.queue import JobQueue
from storage.tables import utcnow
from storage.wakeups import JobWatcher

Sessions = async_sessionmaker[AsyncSession]
AN_HOUR_S = 3600.0
BOUND_S = 60.0  # a generous bound for a signal that normally takes well under a second


class Woken:
    """Records each wake-up and lets a test wait for the next one with given kinds."""

    def __init__(self) -> None:
        self.kinds: list[tuple[datetime, set[str]]] = []
        self.changed = asyncio.Event()

    def __call__(self, kinds: set[str]) -> None:
        self.kinds.append((utcnow(), kinds))
        self.changed.set()

    async def until(self, kind: str, since: datetime | None = None) -> None:
        """Wait for a wake-up for `kind` (at or after `since`)."""
        since = since or datetime.min.replace(tzinfo=UTC)
        async with asyncio.timeout(BOUND_S):
            while not any(kind in kinds and at >= since for at, kinds in self.kinds):
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def other_process(database_url: str) -> AsyncIterator[Sessions]:
    """Sessions on an engine of their own, as another replica or worker process has."""
    engine = create_engine(database_url)
    yield sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
async def woken(sessions: Sessions) -> AsyncIterator[Woken]:
    """A watcher that is listening: it has already been woken once, for a "warm-up" job
    queued before it started (which stays queued, so it is in every later wake-up)."""
    await enqueue(sessions, await add_task(sessions), kind="warm-up")
    woken = Woken()
    watching = asyncio.create_task(JobWatcher(sessions, fallback_s=AN_HOUR_S).run(woken))
    await woken.until("warm-up")
    yield woken
    watching.cancel()
    await asyncio.gather(watching, return_exceptions=True)


async def test_a_job_added_by_another_process_wakes_its_kind(
    other_process: Sessions, woken: Woken
) -> None:
    await enqueue(other_process, await add_task(other_process), kind="execution")

    await woken.until("execution")

    assert woken.kinds[-1][1] == {"warm-up", "execution"}


async def test_a_job_requeued_for_later_wakes_when_it_comes_due(
    other_process: Sessions, woken: Woken
) -> None:
    await enqueue(other_process, await add_task(other_process), kind="planning")
    await woken.until("planning")
    queue = JobQueue(other_process, "another-worker")
    job = await queue.claim(["planning"])
    assert job is not None

    due = utcnow() + timedelta(seconds=1)  # the job's run_after is at least this
    await queue.retry_later(job.id, timedelta(seconds=1), "Slack answered HTTP 503")

    await woken.until("planning", since=due)

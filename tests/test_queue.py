"""The durable job queue, the same suite on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.db import create_engine, sessionmaker
from storage.queue import CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobQueue
from storage.tables import Job, Task, utcnow
from storage.triggers import first_delivery, forget_before

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def task_id(sessions: Sessions) -> int:
    return await add_task(sessions)


async def add_task(sessions: Sessions) -> int:
    """The smallest task row a job can point at."""
    async with sessions.begin() as session:
        task = Task(state="queued", ref_kind="text", ref_key="SHOP-1", title="x", channel_id="C1")
        session.add(task)
        await session.flush()
        return task.id


async def enqueue(
    sessions: Sessions,
    task_id: int,
    kind: str = "plan",
    priority: int = 1,
    run_after: datetime | None = None,
) -> Job:
    async with sessions.begin() as session:
        job = JobQueue.enqueue(session, task_id, kind, priority)
        if run_after is not None:
            job.run_after = run_after
    return job


async def job_row(sessions: Sessions, job_id: int) -> Job:
    async with sessions() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        return job


async def claimed_id(queue: JobQueue, kinds: list[str]) -> int | None:
    job = await queue.claim(kinds)
    return None if job is None else job.id


async def test_claims_by_priority_then_first_in_first_out(sessions: Sessions, task_id: int) -> None:
    low = await enqueue(sessions, task_id, priority=2)
    first = await enqueue(sessions, task_id, priority=1)
    second = await enqueue(sessions, task_id, priority=1)
    urgent = await enqueue(sessions, task_id, priority=0)
    queue = JobQueue(sessions, "worker-1")

    order = [await claimed_id(queue, ["plan"]) for _ in range(5)]

    assert order == [urgent.id, first.id, second.id, low.id, None]


async def test_claims_only_the_kinds_asked_for(sessions: Sessions, task_id: int) -> None:
    plan = await enqueue(sessions, task_id, kind="plan", priority=0)
    execute = await enqueue(sessions, task_id, kind="execute", priority=5)
    queue = JobQueue(sessions, "worker-1")

    assert await claimed_id(queue, ["execute"]) == execute.id
    assert await claimed_id(queue, ["execute"]) is None
    assert await claimed_id(queue, ["review"]) is None
    assert await claimed_id(queue, ["execute", "plan"]) == plan.id


async def test_a_job_waits_for_its_run_after(sessions: Sessions, task_id: int) -> None:
    later = await enqueue(sessions, task_id, priority=0, run_after=utcnow() + timedelta(hours=1))
    now = await enqueue(sessions, task_id, priority=9)
    queue = JobQueue(sessions, "worker-1")

    assert await claimed_id(queue, ["plan"]) == now.id
    assert await claimed_id(queue, ["plan"]) is None
    async with sessions.begin() as session:
        job = await session.get(Job, later.id)
        assert job is not None
        job.run_after = utcnow() - timedelta(seconds=1)
    assert await claimed_id(queue, ["plan"]) == later.id


async def test_a_claimed_job_is_not_claimed_again(sessions: Sessions, task_id: int) -> None:
    job = await enqueue(sessions, task_id)
    first, second = JobQueue(sessions, "worker-1"), JobQueue(sessions, "worker-2")

    claimed = await first.claim(["plan"])

    assert claimed is not None and claimed.id == job.id
    assert (claimed.status, claimed.lease_owner, claimed.attempts) == (RUNNING, "worker-1", 1)
    assert await second.claim(["plan"]) is None
    assert await first.claim(["plan"]) is None


async def test_simultaneous_claims_each_find_a_job(
    database_url: str,
    sessions: Sessions,
    task_id: int,
) -> None:
    """A claim never comes back empty-handed while runnable jobs remain."""
    job_ids = [(await enqueue(sessions, task_id)).id for _ in range(8)]
    engines = [create_engine(database_url) for _ in range(4)]
    queues = [JobQueue(sessionmaker(e), f"worker-{n}") for n, e in enumerate(engines)]
    try:
        claimed = await asyncio.gather(*(claimed_id(q, ["plan"]) for q in queues for _ in range(2)))
    finally:
        await asyncio.gather(*(e.dispose() for e in engines))

    assert set(claimed) == set(job_ids)


async def claim_until_empty(queue: JobQueue, claims: list[tuple[str, int]]) -> None:
    while (job := await queue.claim(["plan"])) is not None:
        claims.append((queue.owner, job.id))


@pytest.mark.parametrize("owners", [2, 4])
async def test_concurrent_owners_claim_every_job_exactly_once(
    database_url: str,
    sessions: Sessions,
    task_id: int,
    owners: int,
) -> None:
    job_ids = [(await enqueue(sessions, task_id, priority=n % 3)).id for n in range(50)]
    # Each owner is its own engine (a replica, or a process), with three claim loops.
    engines = [create_engine(database_url) for _ in range(owners)]
    queues = [JobQueue(sessionmaker(e), f"worker-{n}") for n, e in enumerate(engines)]
    claims: list[tuple[str, int]] = []
    try:
        await asyncio.gather(*(claim_until_empty(q, claims) for q in queues for _ in range(3)))
    finally:
        await asyncio.gather(*(e.dispose() for e in engines))

    duplicates = [job_id for job_id, n in Counter(i for _, i in claims).items() if n > 1]
    assert duplicates == []
    assert sorted(i for _, i in claims) == sorted(job_ids)
    async with sessions() as session:
        rows = (await session.execute(select(Job.id, Job.status, Job.lease_owner))).all()
    assert {(i, RUNNING, owner) for owner, i in claims} == {tuple(row) for row in rows}


async def test_four_busy_owners_each_claim_with_one_statement_and_all_take_part(
    database_url: str,
    sessions: Sessions,
    task_id: int,
) -> None:
    """What keeps claims fast under contention: a claim is one statement, never a retry
    loop or a separate pick, and no owner is shut out while the others work."""
    jobs = 400
    async with sessions.begin() as session:
        for n in range(jobs):
            JobQueue.enqueue(session, task_id, "plan", n % 3)
    engines = [create_engine(database_url) for _ in range(4)]
    queues = [JobQueue(sessionmaker(e), f"worker-{n}") for n, e in enumerate(engines)]
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "jobs" in statement.lower():
            statements.append(statement.lstrip().split(None, 1)[0].upper())

    for engine in engines:
        event.listen(engine.sync_engine, "before_cursor_execute", record)
    claims: list[tuple[str, int]] = []
    loops = 2 * len(queues)
    try:
        await asyncio.gather(*(q.claim(["plan"]) for q in queues))  # connect every owner
        statements.clear()
        await asyncio.gather(*(claim_until_empty(q, claims) for q in queues for _ in range(2)))
    finally:
        await asyncio.gather(*(e.dispose() for e in engines))

    assert len(claims) == len({i for _, i in claims}) == jobs - len(queues)
    # Each claim that took a job, and each loop's last, empty one: one UPDATE, nothing else.
    assert statements == ["UPDATE"] * (len(claims) + loops)
    assert {owner for owner, _ in claims} == {q.owner for q in queues}


async def test_heartbeat_renews_until_the_task_is_cancelled(
    sessions: Sessions, task_id: int
) -> None:
    await enqueue(sessions, task_id)
    queue = JobQueue(sessions, "worker-1", lease=timedelta(seconds=30))
    job = await queue.claim(["plan"])
    assert job is not None and job.lease_expires_at is not None
    await asyncio.sleep(0.01)

    assert await queue.heartbeat(job.id) is True
    renewed = (await job_row(sessions, job.id)).lease_expires_at
    assert renewed is not None and renewed > job.lease_expires_at
    assert await JobQueue(sessions, "worker-2").heartbeat(job.id) is False

    async with sessions.begin() as session:
        await queue.cancel_for_task(session, task_id)

    assert await queue.heartbeat(job.id) is False
    assert await queue.status_of(job.id) == CANCELLED


async def test_reclaim_expired_requeues_only_running_jobs_past_their_lease(
    sessions: Sessions, task_id: int
) -> None:
    # A negative lease has run out as soon as it is taken: no waiting on the clock.
    short = JobQueue(sessions, "stalled-worker", lease=timedelta(seconds=-1))
    long = JobQueue(sessions, "healthy-worker", lease=timedelta(minutes=5))
    # Jobs that ended keep their old lease time; the sweep must leave them ended.
    ended = {}
    for status in (DONE, FAILED, CANCELLED):
        job = await enqueue(sessions, task_id)
        assert await claimed_id(short, ["plan"]) == job.id
        assert await short.finish(job.id, status)
        ended[job.id] = status
    stalled = await enqueue(sessions, task_id)
    assert await claimed_id(short, ["plan"]) == stalled.id
    healthy = await enqueue(sessions, task_id)
    assert await claimed_id(long, ["plan"]) == healthy.id
    waiting = await enqueue(sessions, task_id)

    assert await long.reclaim_expired() == 1

    assert await long.status_of(stalled.id) == QUEUED
    assert (await job_row(sessions, stalled.id)).lease_owner is None
    assert await long.status_of(healthy.id) == RUNNING
    assert await long.status_of(waiting.id) == QUEUED
    assert {job_id: await long.status_of(job_id) for job_id in ended} == ended
    assert await short.heartbeat(stalled.id) is False
    again = await long.claim(["plan"])
    assert again is not None
    assert (again.id, again.lease_owner, again.attempts) == (stalled.id, "healthy-worker", 2)
    assert await long.reclaim_expired() == 0


async def test_cancelling_a_task_ends_its_jobs_on_every_owner_and_no_other_tasks(
    sessions: Sessions,
) -> None:
    mine, other = await add_task(sessions), await add_task(sessions)
    here, there = JobQueue(sessions, "replica-a"), JobQueue(sessions, "replica-b")

    async def running(queue: JobQueue, task: int) -> int:
        job = await enqueue(sessions, task)
        assert await claimed_id(queue, ["plan"]) == job.id
        return job.id

    mine_here, mine_there = await running(here, mine), await running(there, mine)
    other_there = await running(there, other)
    mine_queued = (await enqueue(sessions, mine)).id
    other_queued = (await enqueue(sessions, other)).id

    async with sessions.begin() as session:
        await here.cancel_for_task(session, mine)

    for job_id in (mine_here, mine_there, mine_queued):
        assert await here.status_of(job_id) == CANCELLED
    # The other replica's step learns it at its next heartbeat; it ended, it was not lost.
    assert await there.heartbeat(mine_there) is False
    assert await there.lease_lost(mine_there) is False
    assert await there.heartbeat(other_there) is True
    assert await here.status_of(other_queued) == QUEUED
    assert await claimed_id(here, ["plan"]) == other_queued


async def test_cancelling_only_queued_jobs_leaves_a_running_step_to_finish(
    sessions: Sessions, task_id: int
) -> None:
    step = await enqueue(sessions, task_id)
    queue = JobQueue(sessions, "worker-1")
    assert await claimed_id(queue, ["plan"]) == step.id
    queued = await enqueue(sessions, task_id)

    async with sessions.begin() as session:
        await queue.cancel_for_task(session, task_id, running=False)

    assert await queue.status_of(queued.id) == CANCELLED
    assert await queue.heartbeat(step.id) is True
    assert await queue.finish(step.id, DONE) is True


async def test_retry_later_requeues_after_the_delay(sessions: Sessions, task_id: int) -> None:
    job = await enqueue(sessions, task_id)
    queue = JobQueue(sessions, "worker-1")
    assert await claimed_id(queue, ["plan"]) == job.id

    await queue.retry_later(job.id, timedelta(hours=1), "rate limited")

    row = await job_row(sessions, job.id)
    assert (row.status, row.last_error, row.lease_owner) == (QUEUED, "rate limited", None)
    assert await queue.claim(["plan"]) is None
    async with sessions.begin() as session:  # the hour has passed
        waited = await session.get(Job, job.id)
        assert waited is not None
        waited.run_after = utcnow() - timedelta(seconds=1)
    again = await queue.claim(["plan"])
    assert again is not None and (again.id, again.attempts) == (job.id, 2)


async def test_ahead_of_counts_running_and_earlier_queued_jobs_of_its_kind(
    sessions: Sessions, task_id: int
) -> None:
    a = await enqueue(sessions, task_id, priority=1)
    b = await enqueue(sessions, task_id, priority=1)
    urgent = await enqueue(sessions, task_id, priority=0)
    await enqueue(sessions, task_id, kind="execute", priority=0)
    last = await enqueue(sessions, task_id, priority=1)
    queue = JobQueue(sessions, "worker-1")

    assert [await queue.ahead_of(j) for j in (urgent, a, b, last)] == [0, 1, 2, 3]
    assert await claimed_id(queue, ["plan"]) == urgent.id
    assert [await queue.ahead_of(j) for j in (a, b, last)] == [1, 2, 3]  # running still counts
    await queue.finish(urgent.id, DONE)
    assert [await queue.ahead_of(j) for j in (a, b, last)] == [0, 1, 2]


async def test_a_worker_past_its_lease_cannot_finish_or_requeue_the_job(
    sessions: Sessions, task_id: int
) -> None:
    job = await enqueue(sessions, task_id)
    paused = JobQueue(sessions, "paused-worker", lease=timedelta(milliseconds=50))
    taker = JobQueue(sessions, "taker", lease=timedelta(minutes=5))
    assert await claimed_id(paused, ["plan"]) == job.id
    await asyncio.sleep(0.1)
    assert await taker.reclaim_expired() == 1
    assert await claimed_id(taker, ["plan"]) == job.id

    assert await paused.finish(job.id, CANCELLED) is False
    assert await paused.retry_later(job.id, timedelta(0), "late") is False
    assert await paused.lease_lost(job.id) and not await taker.lease_lost(job.id)
    row = await job_row(sessions, job.id)
    assert (row.status, row.lease_owner) == (RUNNING, "taker")
    assert await taker.finish(job.id, DONE) is True


async def test_a_trigger_counts_once_until_forgotten(sessions: Sessions) -> None:
    assert await first_delivery(sessions, "slack", "Ev001") is True
    assert await first_delivery(sessions, "slack", "Ev001") is False
    assert await first_delivery(sessions, "alert", "Ev001") is True  # another source
    await forget_before(sessions, "slack", utcnow() + timedelta(seconds=1))
    assert await first_delivery(sessions, "slack", "Ev001") is True
    assert await first_delivery(sessions, "alert", "Ev001") is False

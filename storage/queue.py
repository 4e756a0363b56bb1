"""The durable job queue: jobs are rows, claimed under a lease that a heartbeat renews.

One implementation serves SQLite and PostgreSQL. A claim is one UPDATE that picks the best
queued job in a subquery (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises writers)
and takes it only if it is still queued, so two workers can never both own a job.
On PostgreSQL, adding or requeueing a job notifies NOTIFY_CHANNEL when its transaction
commits (storage/wakeups.py listens).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Update, and_, event, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from storage.jobs import JobStatus
from storage.tables import Job, utcnow

QUEUED, RUNNING, DONE, FAILED, CANCELLED = JobStatus  # short names for the statements below
NOTIFY_CHANNEL = "fixbot_jobs"
_NOTIFY = text(f"NOTIFY {NOTIFY_CHANNEL}")


class JobQueue:
    """Enqueue, claim, heartbeat and finish jobs for one worker process (`owner`)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        owner: str,
        lease: timedelta = timedelta(seconds=60),
    ) -> None:
        self.sessions = sessions
        self.owner = owner
        self.lease = lease

    @staticmethod
    def enqueue(session: AsyncSession, task_id: int, kind: str, priority: int) -> Job:
        """Add a job inside the caller's transaction (with the task change that needs it)."""
        job = Job(task_id=task_id, kind=kind, priority=priority, status=QUEUED)
        session.add(job)
        if session.get_bind().dialect.name == "postgresql":
            # Sent with the commit (the caller's), so no one looks before the job is there.
            event.listen(session.sync_session, "before_commit", _notify, once=True)
        return job

    async def claim(self, kinds: Iterable[str]) -> Job | None:
        """Take the most urgent runnable job of these kinds, or None."""
        now = utcnow()
        # One statement, so the pick and the take share one write transaction. On SQLite,
        # a separate SELECT ran outside it and could pick a job another worker then took,
        # and the claim came back empty while runnable jobs remained.
        best = (
            select(Job.id)
            .where(Job.status == QUEUED, Job.kind.in_(list(kinds)), Job.run_after <= now)
            .order_by(Job.priority, Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        async with self.sessions.begin() as session:
            claimed = await session.execute(
                update(Job)
                .where(Job.id == best, Job.status == QUEUED)
                .values(
                    status=RUNNING,
                    lease_owner=self.owner,
                    lease_expires_at=now + self.lease,
                    attempts=Job.attempts + 1,
                )
                .returning(Job)
            )
            return claimed.scalar_one_or_none()

    async def heartbeat(self, job_id: int) -> bool:
        """Renew the lease; False when the job is no longer ours (cancelled or taken over)."""
        async with self.sessions.begin() as session:
            result = await session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == RUNNING, Job.lease_owner == self.owner)
                .values(lease_expires_at=utcnow() + self.lease)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def finish(self, job_id: int, status: str, error: str | None = None) -> bool:
        """End a job this worker runs; False (nothing written) when its lease was lost."""
        async with self.sessions.begin() as session:
            result = await session.execute(
                self._owned(job_id).values(
                    status=status, last_error=error, finished_at=utcnow(), lease_owner=None
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def retry_later(self, job_id: int, delay: timedelta, error: str) -> bool:
        """Put a job back in the queue after a transient failure; False if the lease was lost.

        A passing failure gives its attempt back (attempts count real failures only) and
        the first one marks when the job began waiting (`transient_since`).
        """
        now = utcnow()
        return await self._requeue(
            job_id,
            now + delay,
            last_error=error,
            max_attempts=Job.max_attempts + 1,
            transient_since=func.coalesce(Job.transient_since, now),
        )

    async def postpone(self, job_id: int, until: datetime) -> bool:
        """Put a job back until `until` without counting the claim as an attempt."""
        return await self._requeue(job_id, until, attempts=Job.attempts - 1)

    async def _requeue(self, job_id: int, run_after: datetime, **values: Any) -> bool:
        async with self.sessions.begin() as session:
            result = await session.execute(
                self._owned(job_id).values(
                    status=QUEUED,
                    run_after=run_after,
                    lease_owner=None,
                    lease_expires_at=None,
                    **values,
                )
            )
            await _notify_async(session)  # watchers learn when it comes due
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def _owned(self, job_id: int) -> Update:
        """An UPDATE of the job that applies only while this worker holds its lease."""
        return update(Job).where(
            Job.id == job_id, Job.status == RUNNING, Job.lease_owner == self.owner
        )

    async def reclaim_expired(self) -> int:
        """Requeue running jobs whose owner stopped renewing its lease."""
        async with self.sessions.begin() as session:
            result = await session.execute(
                update(Job)
                .where(Job.status == RUNNING, Job.lease_expires_at < utcnow())
                .values(status=QUEUED, lease_owner=None, lease_expires_at=None)
            )
            if result.rowcount:  # type: ignore[attr-defined]
                await _notify_async(session)
            return int(result.rowcount)  # type: ignore[attr-defined]

    async def cancel_for_task(
        self, session: AsyncSession, task_id: int, *, running: bool = True
    ) -> None:
        """Cancel a task's queued jobs, and unless `running` is False its running ones,
        inside the caller's transaction (a running job's heartbeat then stops its step)."""
        statuses = [QUEUED, RUNNING] if running else [QUEUED]
        await session.execute(
            update(Job)
            .where(Job.task_id == task_id, Job.status.in_(statuses))
            .values(status=CANCELLED, finished_at=utcnow())
        )

    async def ahead_of(self, job: Job) -> int:
        """How many queued or running jobs of the same kind come before this one."""
        async with self.sessions() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(Job)
                .where(
                    Job.kind == job.kind,
                    Job.id != job.id,
                    or_(
                        Job.status == RUNNING,
                        and_(
                            Job.status == QUEUED,
                            or_(
                                Job.priority < job.priority,
                                and_(Job.priority == job.priority, Job.id < job.id),
                            ),
                        ),
                    ),
                )
            )
            return int(count or 0)

    async def queued_counts(self) -> dict[str, int]:
        """How many jobs of each kind wait in the queue (the metrics' queue lengths)."""
        async with self.sessions() as session:
            rows = await session.execute(
                select(Job.kind, func.count()).where(Job.status == QUEUED).group_by(Job.kind)
            )
            return {kind: count for kind, count in rows.tuples()}

    async def lease_lost(self, job_id: int) -> bool:
        """Whether another worker took this job over (a cancelled job is not lost: it ended)."""
        async with self.sessions() as session:
            row = (
                await session.execute(select(Job.status, Job.lease_owner).where(Job.id == job_id))
            ).one_or_none()
        if row is None:
            return True
        status, owner = row
        return status != CANCELLED and not (status == RUNNING and owner == self.owner)

    async def status_of(self, job_id: int) -> str | None:
        async with self.sessions() as session:
            return await session.scalar(select(Job.status).where(Job.id == job_id))


def _notify(session: Session) -> None:
    """Tell other processes' watchers (storage/wakeups.py) that jobs changed; PostgreSQL
    delivers it when the transaction commits, and not at all if it rolls back."""
    session.execute(_NOTIFY)


async def _notify_async(session: AsyncSession) -> None:
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(_NOTIFY)

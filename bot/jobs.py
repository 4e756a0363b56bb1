"""The worker pool: asyncio workers per kind claim jobs from the durable queue and run them.

A running job holds a lease that a heartbeat renews; when the heartbeat finds the job
cancelled (by a person, on any replica) or taken over (its lease ran out) the step is
cancelled. A handler (one per job kind) returns its `Outcome`: done, failed (it told the
thread), skipped (stale) or postponed (it waits without counting as an attempt); the pool
writes it to the queue and the metrics as it is. The error a handler raises decides what
follows (bot/errors.py): `Transient` goes back to the queue with exponential backoff and
jitter, anything else ends the task with its reason in the thread. A worker's own
database writes are retried while the database is away, and no error ends a worker: it
logs and serves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from agents.runner import AgentPermanentError
from bot import logs, metrics
from bot.config import Settings
from bot.faults import Backoff, retried, transient
from bot.views import fmt_duration
from repos.errors import Transient
from storage.jobs import JobKind, JobStatus
from storage.queue import JobQueue
from storage.tables import Job, aware, utcnow
from storage.wakeups import JobWatcher

log = logging.getLogger(__name__)

# Idle workers are woken when jobs may be runnable (this process's enqueues, and
# storage/wakeups.py's watcher for the rest); without a wake they still look this often.
FALLBACK_POLL_S = 15.0
BACKOFF_MAX_S = 300.0
# An idle worker looks for work at least every FALLBACK_POLL_S; one that has not looked for
# this long (and is not running a job) is stuck, and /readyz says so.
CLAIM_STALE_S = 60.0


@dataclass(frozen=True)
class Outcome:
    """How a job's handler ended; the pool records it as it is."""

    status: JobStatus  # DONE, FAILED, CANCELLED (skipped); QUEUED: postponed until `until`
    reason: str | None = None
    until: datetime | None = None

    @classmethod
    def done(cls) -> Outcome:
        return cls(JobStatus.DONE)

    @classmethod
    def failed(cls, reason: str) -> Outcome:
        """The step failed and its task was failed (the thread was told)."""
        return cls(JobStatus.FAILED, reason)

    @classmethod
    def skipped(cls, reason: str) -> Outcome:
        """The job was stale: its task had moved on (cancelled, decided meanwhile)."""
        return cls(JobStatus.CANCELLED, reason)

    @classmethod
    def postponed(cls, until: datetime) -> Outcome:
        """The step waits until `until` without counting as an attempt."""
        return cls(JobStatus.QUEUED, until=until)


# How each outcome counts in the step metrics: (status, error type).
COUNTED = {
    JobStatus.DONE: ("success", None),
    JobStatus.FAILED: ("failed", "step_failed"),
    JobStatus.CANCELLED: ("cancelled", None),
    JobStatus.QUEUED: ("waiting", None),
}

JobHandler = Callable[[Job], Awaitable[Outcome]]
Sweep = Callable[[], Awaitable[None]]
FailureHandler = Callable[[int, str], Awaitable[None]]


class WorkerPool:
    """Runs `planning` and `execution` jobs with the concurrency from settings, and the
    after-merge follow-up (`after_merge`: plain HTTP calls) on one worker.

    Made first, so that the task machinery can wake it and cancel a task's steps; `start`
    gives it the handlers."""

    def __init__(self, settings: Settings, queue: JobQueue) -> None:
        self.settings = settings
        self.queue = queue
        # Three heartbeats a lease: one lost renewal never costs a running job its lease.
        self.heartbeat_interval_s = queue.lease.total_seconds() / 3
        self._wake = {kind: asyncio.Event() for kind in JobKind}
        self._handlers: Mapping[JobKind, JobHandler] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._running: dict[int, tuple[Job, asyncio.Task[None]]] = {}
        self._stopping = False
        # Per worker: when it last looked for a job (None while it runs one).
        self._last_claim: dict[str, float | None] = {}
        self._beat = asyncio.Event()  # set and cleared at once: wakes every heartbeat

    def start(
        self,
        handlers: Mapping[JobKind, JobHandler],
        *,
        on_failure: FailureHandler,
        sweep: Sweep,
    ) -> None:
        """Start the workers: `handlers` run the jobs of each kind; `on_failure` ends a task
        whose step raised (told why); `sweep` runs with the maintenance."""
        self._handlers, self.on_failure, self.sweep = handlers, on_failure, sweep
        limits = self.settings.concurrency
        kinds = (
            (JobKind.PLANNING, limits.planning),
            (JobKind.EXECUTION, limits.execution),
            (JobKind.AFTER_MERGE, 1),
        )
        for kind, count in kinds:
            for number in range(count):
                self._workers.append(
                    asyncio.create_task(self._work(kind), name=f"worker-{kind}-{number}")
                )
        self._workers.append(asyncio.create_task(self._maintain(), name="maintenance"))
        watcher = JobWatcher(self.queue.sessions)
        self._workers.append(asyncio.create_task(watcher.run(self._wake_kinds), name="watcher"))

    def wake(self) -> None:
        """A job was added in this process: workers look now instead of at the next poll."""
        self._wake_kinds(set(self._wake))

    def _wake_kinds(self, kinds: set[str]) -> None:
        for kind, event in self._wake.items():
            if kind in kinds:
                event.set()

    @property
    def active_jobs(self) -> int:
        return len(self._running)

    @property
    def claiming(self) -> bool:
        """Whether every worker is alive and either running a job or looking for one."""
        if self._stopping or not self._workers:
            return False
        if any(worker.done() for worker in self._workers):
            return False
        now = time.monotonic()
        return all(
            looked is None or now - looked < CLAIM_STALE_S for looked in self._last_claim.values()
        )

    async def stop(self, grace_s: float = 20.0) -> None:
        """Stop claiming; give running steps `grace_s` to finish, then cancel them."""
        self._stopping = True
        self.wake()
        running = [step for _job, step in self._running.values()]
        if running:
            await asyncio.wait(running, timeout=grace_s)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _work(self, kind: JobKind) -> None:
        worker = asyncio.current_task()
        assert worker is not None
        name = worker.get_name()
        unavailable = Backoff(f"{name}: claiming a job")
        while not self._stopping:
            self._last_claim[name] = time.monotonic()
            try:
                job = await self.queue.claim([kind])
            except Exception as error:
                if transient(error) is None:
                    log.exception("%s: claiming a job failed", name)
                await unavailable.wait(error)
                continue
            unavailable.reset()
            if job is None:
                event = self._wake[kind]
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel
                # that comes as the event is set, and this loop would never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FALLBACK_POLL_S):
                        await event.wait()
                event.clear()
                continue
            self._last_claim[name] = None
            step = asyncio.create_task(self._run(job), name=f"job-{job.id}")
            self._running[job.id] = (job, step)
            try:
                await asyncio.shield(step)
            except asyncio.CancelledError:
                if not worker.cancelling():
                    # Only the step was cancelled (its lease lost, a person's cancel) and it
                    # has ended: the worker is free for the next job.
                    continue
                if not step.done():
                    step.cancel()
                    await asyncio.gather(step, return_exceptions=True)
                raise
            except Exception:  # _run ends every job itself; this is a bug, not a reason to stop
                log.exception("%s: job %s ended with an unexpected error", name, job.id)
            finally:
                self._running.pop(job.id, None)

    async def _run(self, job: Job) -> None:
        timeout = (
            self.settings.limits.planning_timeout_s
            if job.kind == JobKind.PLANNING
            else self.settings.limits.execution_timeout_s
        )
        step = asyncio.current_task()
        assert step is not None
        # This runs in the job's own asyncio task: the tags end with it, no reset needed.
        logs.bind(task_id=job.task_id, agent=metrics.agent_label(job.kind))
        counted = metrics.StepMetrics(job.kind)
        log.info(
            "%s step started", job.kind, extra={"data": {"job": job.id, "attempt": job.attempts}}
        )
        heartbeat = asyncio.create_task(self._heartbeat(job, step))
        try:
            await self._run_and_record(job, timeout, counted)
        except asyncio.CancelledError:
            counted.ended("interrupted" if self._stopping else "cancelled")
            if self._stopping:
                raise  # shutting down: the lease expires and another worker resumes the job
            # Nothing to write: whoever cancelled the job marked it, and a job taken over
            # belongs to the worker that took it.
            status = await retried(f"reading job {job.id}", lambda: self.queue.status_of(job.id))
            if status != JobStatus.CANCELLED:
                log.warning(
                    "job %s: lease lost (now %s under another worker); this step stopped",
                    job.id,
                    status,
                )
        except Exception:  # the outcome could not be written: the lease runs out, it runs again
            log.exception("job %s: its outcome could not be recorded", job.id)
        finally:
            # Recorded before the last await: a cancel there (a stop) would skip it, and the
            # active-steps gauge would stay up.
            counted.finish()
            log.info("%s step ended: %s", job.kind, counted.status, extra={"data": {"job": job.id}})
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)

    async def _run_and_record(self, job: Job, timeout: float, counted: metrics.StepMetrics) -> None:  # noqa: ASYNC109
        """Run the job; its error decides what is written and what the thread is told."""
        try:
            async with asyncio.timeout(timeout):
                outcome = await self._handlers[JobKind(job.kind)](job)
        except TimeoutError:
            counted.ended("failed", "timeout")
            await self._fail(
                job,
                "timed out",
                f"The {job.kind} step ran past its {timeout:.0f} s limit and was stopped.",
            )
        except AgentPermanentError as error:  # retrying will not help: say why at once
            counted.ended("failed", "agent_permanent")
            await self._fail(job, str(error), f"Claude Code could not run this step: {error}")
        except Exception as error:
            passing = transient(error)
            if passing is not None:
                counted.ended("failed", "transient")
                await self._retry_or_fail(job, passing)
                return
            counted.ended("failed", "internal")
            log.exception("job %s failed", job.id)
            reason = f"{type(error).__name__}: {error}"
            told = f"Fixbot hit an unexpected error in this step ({reason})."
            await self._fail(job, reason, told)
        else:
            counted.ended(*COUNTED[outcome.status])
            await self._record(job, outcome)

    async def _record(self, job: Job, outcome: Outcome) -> None:
        """Write a handler's outcome: the job ends with it, or waits until its time."""
        if outcome.status == JobStatus.QUEUED:
            assert outcome.until is not None
            until = outcome.until
            if not await retried(
                f"postponing job {job.id}", lambda: self.queue.postpone(job.id, until)
            ):
                log.warning("job %s: lease lost before it could wait", job.id)
            return
        if not await retried(
            f"finishing job {job.id}",
            lambda: self.queue.finish(job.id, outcome.status, outcome.reason),
        ):
            log.warning("job %s: lease lost; the worker that took it over finishes it", job.id)

    async def _fail(self, job: Job, error: str, told: str) -> None:
        """End the job FAILED and tell the thread, unless another worker holds it now."""
        if not await retried(
            f"failing job {job.id}", lambda: self.queue.finish(job.id, JobStatus.FAILED, error)
        ):
            log.warning("job %s: lease lost; not reporting its failure (%s)", job.id, error)
            return
        try:
            await self.on_failure(job.task_id, told)
        except Exception:  # the sweep finds the task without a job and deals with it
            log.exception("job %s: its failure could not be told", job.id)

    async def _retry_or_fail(self, job: Job, error: Transient) -> None:
        """Back off and try again; waiting has its own bound (`limits.transient_wait_s`)."""
        since = aware(job.transient_since) if job.transient_since else utcnow()
        waited_s = (utcnow() - since).total_seconds()
        if waited_s >= self.settings.limits.transient_wait_s:
            await self._fail(
                job,
                str(error),
                f"This step kept failing for a passing reason for {fmt_duration(waited_s)} "
                f"({job.attempts} attempts), so I stopped waiting: {error}",
            )
            return
        if job.attempts >= job.max_attempts:  # interrupted runs used up its real attempts
            await self._fail(
                job,
                str(error),
                f"This step kept failing after {job.attempts} attempts: {error}",
            )
            return
        delay = min(BACKOFF_MAX_S, self.settings.limits.retry_backoff_s * 2 ** (job.attempts - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter keeps replicas from retrying in step
        delay = max(delay, min(error.retry_after or 0.0, BACKOFF_MAX_S))
        log.warning("job %s: transient failure, retrying in %.0f s: %s", job.id, delay, error)
        if not await retried(
            f"requeueing job {job.id}",
            lambda: self.queue.retry_later(job.id, timedelta(seconds=delay), str(error)),
        ):
            log.warning("job %s: lease lost before it could be requeued", job.id)

    async def _maintain(self) -> None:
        """Take over jobs whose worker died (on any replica), and end stale work."""
        while not self._stopping:
            try:
                if await self.queue.reclaim_expired():
                    self.wake()
                await self.sweep()
            except Exception as error:
                if transient(error) is None:
                    log.exception("maintenance failed; trying again later")
                else:
                    log.warning("maintenance skipped: %s", transient(error))
            await asyncio.sleep(self.settings.limits.sweep_interval_s)

    def beat_now(self) -> None:
        """Renew every running job's lease now: a task stopped in another process ends here
        at once instead of at the next heartbeat."""
        self._beat.set()
        self._beat.clear()

    async def _heartbeat(self, job: Job, step: asyncio.Task[None]) -> None:
        heartbeat = asyncio.current_task()
        assert heartbeat is not None
        while not heartbeat.cancelling():  # a cancel a library turned into an error ends it too
            with contextlib.suppress(TimeoutError):  # asyncio.timeout: see _work
                async with asyncio.timeout(self.heartbeat_interval_s):
                    await self._beat.wait()
            try:
                # A renewal that takes longer than the lease is no use to it.
                async with asyncio.timeout(self.queue.lease.total_seconds()):
                    still_ours = await self.queue.heartbeat(job.id)
            except Exception as error:
                log.warning("heartbeat for job %s failed: %s", job.id, transient(error) or error)
                continue
            if not still_ours:
                log.info("job %s was cancelled or taken over; stopping its step", job.id)
                step.cancel()
                return

    def cancel_task(self, task_id: int) -> None:
        """Cancel this process's running steps of a task at once (others see it by heartbeat)."""
        for job, step in list(self._running.values()):
            if job.task_id == task_id:
                step.cancel()

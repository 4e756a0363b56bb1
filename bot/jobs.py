"""The worker pool: asyncio workers per kind claim jobs from the durable queue and run them.

A running job holds a lease that a heartbeat renews; when the heartbeat finds the job
cancelled (by a person, on any replica) the step is cancelled. Transient failures go
back to the queue with exponential backoff and jitter; everything else ends the task
with a reason in its thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta

from agents.runner import AgentPermanentError, AgentTransientError
from bot import logs, metrics
from bot.config import Settings
from bot.errors import DailyBudgetReached
from bot.models import AFTER_MERGE
from storage.queue import CANCELLED, DONE, FAILED, JobQueue
from storage.tables import Job

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0  # how often idle workers look for jobs other replicas added
BACKOFF_BASE_S = 5.0
BACKOFF_MAX_S = 300.0

JobRunner = Callable[[Job], Awaitable[None]]
Sweep = Callable[[], Awaitable[None]]
FailureHandler = Callable[[int, str], Awaitable[None]]


class WorkerPool:
    """Runs `planning` and `execution` jobs with the concurrency from settings, and the
    after-merge follow-up (`after_merge`: plain HTTP calls) on one worker."""

    def __init__(
        self,
        settings: Settings,
        queue: JobQueue,
        run_job: JobRunner,
        on_failure: FailureHandler,
        sweep: Sweep,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.run_job = run_job
        self.on_failure = on_failure
        self.sweep = sweep
        # Three heartbeats a lease: one lost renewal never costs a running job its lease.
        self.heartbeat_interval_s = queue.lease.total_seconds() / 3
        self._wake = {kind: asyncio.Event() for kind in ("planning", "execution", AFTER_MERGE)}
        self._workers: list[asyncio.Task[None]] = []
        self._running: dict[int, tuple[Job, asyncio.Task[None]]] = {}
        self._stopping = False

    def start(self) -> None:
        limits = self.settings.concurrency
        kinds = (("planning", limits.planning), ("execution", limits.execution), (AFTER_MERGE, 1))
        for kind, count in kinds:
            for number in range(count):
                self._workers.append(
                    asyncio.create_task(self._work(kind), name=f"worker-{kind}-{number}")
                )
        self._workers.append(asyncio.create_task(self._maintain(), name="maintenance"))

    def wake(self) -> None:
        """A job was added in this process: workers look now instead of at the next poll."""
        for event in self._wake.values():
            event.set()

    @property
    def active_jobs(self) -> int:
        return len(self._running)

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

    async def _work(self, kind: str) -> None:
        while not self._stopping:
            try:
                job = await self.queue.claim([kind])
            except Exception:
                log.exception("claiming a %s job failed", kind)
                job = None
            if job is None:
                event = self._wake[kind]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), POLL_INTERVAL_S)
                event.clear()
                continue
            step = asyncio.create_task(self._run(job), name=f"job-{job.id}")
            self._running[job.id] = (job, step)
            try:
                await asyncio.shield(step)
            except asyncio.CancelledError:
                if not step.done():
                    step.cancel()
                    await asyncio.gather(step, return_exceptions=True)
                raise
            finally:
                self._running.pop(job.id, None)

    async def _run(self, job: Job) -> None:
        timeout = (
            self.settings.limits.planning_timeout_s
            if job.kind == "planning"
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
            async with asyncio.timeout(timeout):
                await self.run_job(job)
        except TimeoutError:
            counted.ended("failed", "timeout")
            await self.queue.finish(job.id, FAILED, "timed out")
            await self.on_failure(
                job.task_id,
                f"The {job.kind} step ran past its {timeout:.0f} s limit and was stopped.",
            )
        except DailyBudgetReached as wait:
            counted.ended("waiting")
            await self.queue.postpone(job.id, wait.until)
        except AgentTransientError as error:
            counted.ended("failed", "agent_transient")
            await self._retry_or_fail(job, str(error))
        except AgentPermanentError as error:  # retrying will not help: say why at once
            counted.ended("failed", "agent_permanent")
            await self.queue.finish(job.id, FAILED, str(error))
            await self.on_failure(job.task_id, f"Claude Code could not run this step: {error}")
        except asyncio.CancelledError:
            counted.ended("interrupted" if self._stopping else "cancelled")
            if self._stopping:
                raise  # shutting down: the lease expires and another worker resumes the job
            await self.queue.finish(job.id, CANCELLED)
        except Exception as error:
            counted.ended("failed", "internal")
            log.exception("job %s failed", job.id)
            await self.queue.finish(job.id, FAILED, str(error))
            await self.on_failure(job.task_id, "Fixbot hit an internal error running this step.")
        else:
            await self.queue.finish(job.id, DONE)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            await counted.finish(self.queue.sessions, job)
            log.info("%s step ended: %s", job.kind, counted.status, extra={"data": {"job": job.id}})

    async def _retry_or_fail(self, job: Job, error: str) -> None:
        if job.attempts >= job.max_attempts:
            await self.queue.finish(job.id, FAILED, error)
            await self.on_failure(
                job.task_id,
                f"Claude Code kept failing after {job.attempts} attempts: {error}",
            )
            return
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (job.attempts - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter keeps replicas from retrying in step
        log.warning("job %s: transient failure, retrying in %.0f s: %s", job.id, delay, error)
        await self.queue.retry_later(job.id, timedelta(seconds=delay), error)

    async def _maintain(self) -> None:
        """Take over jobs whose worker died (on any replica), and end stale work."""
        while not self._stopping:
            try:
                if await self.queue.reclaim_expired():
                    self.wake()
                await self.sweep()
            except Exception:
                log.exception("maintenance failed; trying again later")
            await asyncio.sleep(self.settings.limits.sweep_interval_s)

    async def _heartbeat(self, job: Job, step: asyncio.Task[None]) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            try:
                still_ours = await self.queue.heartbeat(job.id)
            except Exception:
                log.exception("heartbeat for job %s failed", job.id)
                continue
            if not still_ours:
                log.info("job %s was cancelled or taken over; stopping its step", job.id)
                step.cancel()
                return

    def cancel_task_jobs(self, task_id: int) -> None:
        """Cancel this process's running steps of a task at once (others see it by heartbeat)."""
        for job, step in list(self._running.values()):
            if job.task_id == task_id:
                step.cancel()

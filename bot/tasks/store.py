"""Every read and write of tasks, their agent runs and their questions, outside a transition."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agents.runner import StepResult
from bot import metrics
from bot.errors import InvalidTransition
from bot.models import ACTIVE, State
from storage.jobs import JobKind, JobStatus
from storage.queue import JobQueue
from storage.tables import AgentRun, Job, Question, Task, TaskEvent

RUNNING = "running"  # an agent_runs outcome while the step runs
LIVE_JOB = (JobStatus.QUEUED, JobStatus.RUNNING)


def now() -> datetime:
    return datetime.now(UTC)


async def get_task(session: AsyncSession, task_id: int) -> Task:
    """The task; InvalidTransition (nothing to act on) when there is none."""
    task = await session.scalar(select(Task).where(Task.id == task_id))
    if task is None:
        raise InvalidTransition(f"There is no task {task_id}.")
    return task


class TaskStore:
    """Tasks, agent runs and questions in the database; `sessions` for the transitions."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    # Tasks

    async def get(self, task_id: int) -> Task:
        async with self.sessions() as session:
            return await get_task(session, task_id)

    async def fresh(self, task: Task) -> Task:
        """The task as the database has it now (another copy)."""
        return await self.get(task.id)

    async def refresh(self, task: Task) -> None:
        """Reload a detached task's columns in place, after a transition."""
        async with self.sessions() as session:
            fresh = await get_task(session, task.id)
            for column in Task.__table__.columns.keys():
                setattr(task, column, getattr(fresh, column))

    async def save(self, task: Task, **values: Any) -> Task:
        """Write these columns of the task and set them on `task` too."""
        async with self.sessions.begin() as session:
            await session.execute(update(Task).where(Task.id == task.id).values(**values))
        for key, value in values.items():
            setattr(task, key, value)
        return task

    async def add(self, task: Task, actor: str | None) -> Task:
        """Record a new task and its first event."""
        async with self.sessions.begin() as session:
            session.add(task)
            await session.flush()
            session.add(TaskEvent(task_id=task.id, to_state=task.state, actor=actor))
        return task

    async def place(self, task: Task, kind: JobKind, **placed: str) -> Job:
        """Save where the task's thread is and queue its first step, in one transaction."""
        async with self.sessions.begin() as session:
            await session.execute(update(Task).where(Task.id == task.id).values(**placed))
            job = JobQueue.enqueue(session, task.id, kind, task.priority)
        for key, value in placed.items():
            setattr(task, key, value)
        return job

    async def newest(self, *conditions: ColumnElement[bool]) -> Task | None:
        async with self.sessions() as session:
            return await session.scalar(
                select(Task).where(*conditions).order_by(Task.id.desc()).limit(1)
            )

    async def in_thread(self, channel: str, thread_ts: str) -> Task | None:
        """The task whose thread this is (the newest, when an alert came back)."""
        return await self.newest(Task.channel_id == channel, Task.thread_ts == thread_ts)

    async def for_pull(self, repo: str, number: int) -> Task | None:
        return await self.newest(Task.repo == repo, Task.pr_number == number)

    async def add_feedback(self, task_id: int, text: str) -> None:
        async with self.sessions.begin() as session:
            task = await get_task(session, task_id)
            task.feedback = [*(task.feedback or []), text]

    async def drop_feedback(self, task: Task, consumed: int) -> list[str]:
        """Forget the first `consumed` kept replies (a plan took them in); the rest stay."""
        async with self.sessions.begin() as session:
            fresh = await get_task(session, task.id)
            fresh.feedback = list(fresh.feedback or [])[consumed:]
            task.feedback = kept = fresh.feedback
        return kept

    async def test_changes_approved(self, task_id: int) -> bool:
        async with self.sessions() as session:
            found = await session.scalar(
                select(TaskEvent.id).where(
                    TaskEvent.task_id == task_id,
                    TaskEvent.detail["test_changes"].as_string() == "approved",
                )
            )
        return found is not None

    async def record_test_changes_approved(self, task_id: int, user: str) -> None:
        async with self.sessions.begin() as session:
            session.add(
                TaskEvent(
                    task_id=task_id,
                    from_state=State.DONE,
                    to_state=State.DONE,
                    actor=user,
                    detail={"test_changes": "approved"},
                )
            )

    # What the sweep looks for

    async def plans_waiting_since(self, before: datetime) -> list[int]:
        async with self.sessions() as session:
            return list(
                await session.scalars(
                    select(Task.id).where(
                        Task.state == State.AWAITING_APPROVAL, Task.updated_at < before
                    )
                )
            )

    async def jobs_queued_since(self, before: datetime) -> list[int]:
        """The tasks of jobs queued before `before` and still queued."""
        async with self.sessions() as session:
            return list(
                await session.scalars(
                    select(Job.task_id).where(
                        Job.status == JobStatus.QUEUED, Job.created_at < before
                    )
                )
            )

    async def orphans(self, quiet_since: datetime) -> list[int]:
        """Active tasks with no queued or running job whose last job ended before
        `quiet_since` (a failure that could not be told, a crash between two writes)."""
        live = select(Job.id).where(Job.task_id == Task.id, Job.status.in_(LIVE_JOB))
        last_end = (
            select(Job.finished_at)
            .where(Job.task_id == Task.id)
            .order_by(Job.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        async with self.sessions() as session:
            return list(
                await session.scalars(
                    select(Task.id).where(
                        Task.state.in_([state.value for state in ACTIVE]),
                        ~live.exists(),
                        Task.created_at < quiet_since,
                        (last_end.is_(None)) | (last_end < quiet_since),
                    )
                )
            )

    async def requeue_orphan(self, task_id: int) -> str | None:
        """Queue the step an orphaned task is in (its kind, or "running" when a job appeared
        meanwhile); None when it never got a thread."""
        async with self.sessions.begin() as session:
            # The row lock makes replicas' sweeps take turns (PostgreSQL; SQLite has one writer).
            task = await session.scalar(select(Task).where(Task.id == task_id).with_for_update())
            if task is None or task.thread_ts is None:
                return None
            if await session.scalar(
                select(Job.id).where(Job.task_id == task_id, Job.status.in_(LIVE_JOB))
            ):
                return "running"
            executing = task.state in (State.APPROVED, State.EXECUTING)
            kind = JobKind.EXECUTION if executing else JobKind.PLANNING
            JobQueue.enqueue(session, task_id, kind, task.priority)
            return kind

    # Agent runs

    async def planning_session(self, task_id: int) -> str | None:
        """The newest planning session of the task, to resume when revising."""
        async with self.sessions() as session:
            return await session.scalar(
                select(AgentRun.session_id)
                .where(
                    AgentRun.task_id == task_id,
                    AgentRun.step == JobKind.PLANNING,
                    AgentRun.session_id.is_not(None),
                )
                .order_by(AgentRun.id.desc())
                .limit(1)
            )

    async def interrupted_session(self, job: Job) -> str | None:
        """The Claude Code session this job was running when its worker died, if any.

        Its run is marked interrupted: a session is resumed once, then started afresh.
        """
        if job.attempts <= 1:
            return None
        async with self.sessions.begin() as session:
            run = await session.scalar(
                select(AgentRun)
                .where(AgentRun.job_id == job.id, AgentRun.outcome == RUNNING)
                .order_by(AgentRun.id.desc())
                .limit(1)
            )
            if run is None:
                return None
            run.outcome = "interrupted"
            return run.session_id

    async def start_run(
        self, task: Task, job: Job, step: str, session_id: str, started: datetime
    ) -> int:
        """Put a running step on record, so that after a crash any replica can resume it."""
        async with self.sessions.begin() as session:
            run = AgentRun(
                task_id=task.id,
                job_id=job.id,
                step=step,
                session_id=session_id,
                outcome=RUNNING,
                started_at=started,
            )
            session.add(run)
            await session.flush()
            return run.id

    async def record_run(
        self,
        task: Task,
        job: Job,
        step: str,
        result: StepResult | None,
        started: datetime,
        error: str | None = None,
        run_id: int | None = None,
    ) -> None:
        """How a step ended, on its `running` row when it has one; its cost goes on the task."""
        async with self.sessions.begin() as session:
            run = (await session.get(AgentRun, run_id)) if run_id is not None else None
            if run is None:
                run = AgentRun(task_id=task.id, job_id=job.id, step=step, started_at=started)
            if result is None:
                run.outcome, run.error = "error", error
            else:
                run.session_id = result.session_id
                run.outcome = result.outcome
                run.cost_usd = result.cost_usd
                run.input_tokens = result.input_tokens
                run.output_tokens = result.output_tokens
                run.turns = result.turns
                run.duration_s = result.duration_s
                run.error = result.error
                await session.execute(
                    update(Task)
                    .where(Task.id == task.id)
                    .values(cost_usd=Task.cost_usd + result.cost_usd)
                )
            session.add(run)
        if result is not None:  # counted once written: a failed write is tried again
            task.cost_usd += result.cost_usd
            metrics.AGENT_SPEND.labels(metrics.agent_label(step)).inc(result.cost_usd)

    # Questions

    async def add_question(self, task_id: int, question: str) -> int:
        async with self.sessions.begin() as session:
            asked = Question(task_id=task_id, question=question)
            session.add(asked)
            await session.flush()
            return asked.id

    async def question_posted(self, question_id: int, ts: str) -> None:
        async with self.sessions.begin() as session:
            await session.execute(
                update(Question).where(Question.id == question_id).values(message_ts=ts)
            )

    async def answer_of(self, question_id: int) -> str | None:
        async with self.sessions() as session:
            return await session.scalar(select(Question.answer).where(Question.id == question_id))

    async def close_question(self, question_id: int) -> None:
        """Close it unanswered: a late reply becomes feedback instead."""
        async with self.sessions.begin() as session:
            await session.execute(
                update(Question)
                .where(Question.id == question_id, Question.answer.is_(None))
                .values(answer="", answered_at=now())
            )

    async def answer_open_question(self, task_id: int, user: str, text: str) -> int | None:
        """Answer the task's open question, if it has one; returns the question's id."""
        async with self.sessions.begin() as session:
            open_id = await session.scalar(
                select(Question.id)
                .where(Question.task_id == task_id, Question.answer.is_(None))
                .order_by(Question.id.desc())
                .limit(1)
            )
            if open_id is None:
                return None
            changed = await session.execute(
                update(Question)
                .where(Question.id == open_id, Question.answer.is_(None))
                .values(answer=text, answered_by=user, answered_at=now())
            )
            return open_id if changed.rowcount else None  # type: ignore[attr-defined]

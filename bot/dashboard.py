"""The App Home dashboard's data: what runs, what waits, what it costs, read from the database.

`load_dashboard` returns a plain `Dashboard` that `views.home_view` turns into Block Kit;
`HomeRefresher` republishes the Home of people who looked at it recently when tasks change.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from slack_sdk.errors import SlackApiError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.config import Settings
from bot.models import AFTER_MERGE, State
from storage.tables import AgentRun, FixWatch, Job, Task, TaskEvent, aware

log = logging.getLogger(__name__)

RECENT_PAGE_SIZE = 15
LIST_LIMIT = 10  # running steps, queued jobs, awaiting plans and "my tasks" shown at most
STATS_DAYS = 7
RUNNING_STATES = (State.PLANNING, State.REVISING, State.EXECUTING)
OUTCOME_STATES = (State.DONE, State.FAILED, State.REJECTED, State.CANCELLED, State.EXPIRED)


@dataclass(frozen=True)
class TaskSummary:
    """One task as the dashboard shows it."""

    id: int
    ref_key: str
    title: str
    state: str
    channel_id: str
    thread_ts: str | None
    requested_by: str | None
    cost_usd: float
    plan_version: int
    pr_url: str | None
    created_at: datetime
    since: datetime  # when the task entered its current state
    after_merge: str | None = None  # its merged fix's watch status (models.Watch)

    @classmethod
    def of(cls, task: Task, since: datetime | None = None) -> TaskSummary:
        return cls(
            id=task.id,
            ref_key=task.ref_key,
            title=task.title,
            state=task.state,
            channel_id=task.channel_id,
            thread_ts=task.thread_ts,
            requested_by=task.requested_by,
            cost_usd=task.cost_usd,
            plan_version=task.plan_version,
            pr_url=task.pr_url,
            created_at=aware(task.created_at),
            since=aware(since or task.updated_at or task.created_at),
        )


@dataclass(frozen=True)
class QueuedJob:
    """A job waiting for a worker, in the order workers take them."""

    task: TaskSummary
    kind: str
    queued_at: datetime


@dataclass(frozen=True)
class WeekStats:
    """The last seven days: outcomes, speed and spend."""

    finished: int = 0
    succeeded: int = 0
    median_to_plan_s: float | None = None
    median_to_pull_request_s: float | None = None
    spend_today_usd: float = 0.0
    spend_week_usd: float = 0.0

    @property
    def success_rate(self) -> float | None:
        return self.succeeded / self.finished if self.finished else None


@dataclass(frozen=True)
class Dashboard:
    """Everything the App Home shows, as plain data."""

    now: datetime
    daily_budget_usd: float
    task_budget_usd: float
    running: list[TaskSummary] = field(default_factory=list)
    running_total: int = 0
    queue: list[QueuedJob] = field(default_factory=list)
    queue_total: int = 0
    awaiting: list[TaskSummary] = field(default_factory=list)
    awaiting_total: int = 0
    recent: list[TaskSummary] = field(default_factory=list)
    mine: list[TaskSummary] = field(default_factory=list)
    stats: WeekStats = WeekStats()
    page: int = 0
    pages: int = 1

    def summary(self) -> str:
        """One paragraph for `/fix status`."""
        return (
            f"Running: {self.running_total} · queued: {self.queue_total} · "
            f"awaiting approval: {self.awaiting_total}\n"
            f"Spent today: ${self.stats.spend_today_usd:,.2f} of the "
            f"${self.daily_budget_usd:,.2f} daily budget "
            f"(${self.stats.spend_week_usd:,.2f} in the last {STATS_DAYS} days)."
        )


async def load_dashboard(
    sessions: async_sessionmaker[AsyncSession], user: str, settings: Settings, page: int = 0
) -> Dashboard:
    """Read the dashboard for `user`, with page `page` of the recent tasks."""
    now = datetime.now(UTC)
    async with sessions() as session:
        total = await session.scalar(select(func.count(Task.id))) or 0
        pages = max(1, -(-total // RECENT_PAGE_SIZE))
        page = min(max(0, page), pages - 1)
        running_tasks = list(
            await session.scalars(
                select(Task).where(Task.state.in_(RUNNING_STATES)).order_by(Task.id).limit(50)
            )
        )
        since = await _entered_state(session, running_tasks)
        queued = (
            await session.execute(
                select(Job, Task)
                .join(Task, Task.id == Job.task_id)
                .where(Job.status == "queued", Job.kind != AFTER_MERGE)  # agent steps only
                .order_by(Job.priority, Job.id)
                .limit(LIST_LIMIT)
            )
        ).all()
        queue_total = await session.scalar(
            select(func.count(Job.id)).where(Job.status == "queued", Job.kind != AFTER_MERGE)
        )
        awaiting = list(
            await session.scalars(
                select(Task)
                .where(Task.state == State.AWAITING_APPROVAL)
                .order_by(Task.id)
                .limit(LIST_LIMIT)
            )
        )
        awaiting_total = await session.scalar(
            select(func.count(Task.id)).where(Task.state == State.AWAITING_APPROVAL)
        )
        recent = list(
            await session.scalars(
                select(Task)
                .order_by(Task.id.desc())
                .offset(page * RECENT_PAGE_SIZE)
                .limit(RECENT_PAGE_SIZE)
            )
        )
        watches = await session.execute(
            select(FixWatch.task_id, FixWatch.status)
            .where(FixWatch.task_id.in_([t.id for t in recent]))
            .order_by(FixWatch.id)
        )
        watched = {task_id: status for task_id, status in watches}  # the newest wins
        mine = await session.scalars(
            select(Task).where(Task.requested_by == user).order_by(Task.id.desc()).limit(LIST_LIMIT)
        )
        stats = await _week_stats(session, now)
        return Dashboard(
            now=now,
            daily_budget_usd=settings.limits.daily_budget_usd,
            task_budget_usd=settings.limits.task_budget_usd,
            running=[TaskSummary.of(t, since.get(t.id)) for t in running_tasks[:LIST_LIMIT]],
            running_total=len(running_tasks),
            queue=[QueuedJob(TaskSummary.of(t), j.kind, aware(j.created_at)) for j, t in queued],
            queue_total=queue_total or 0,
            awaiting=[TaskSummary.of(t) for t in awaiting],
            awaiting_total=awaiting_total or 0,
            recent=[replace(TaskSummary.of(t), after_merge=watched.get(t.id)) for t in recent],
            mine=[TaskSummary.of(t) for t in mine],
            stats=stats,
            page=page,
            pages=pages,
        )


async def spend_since(session: AsyncSession, start: datetime) -> float:
    """What the agent steps that started after `start` cost, in dollars."""
    spent = await session.scalar(
        select(func.coalesce(func.sum(AgentRun.cost_usd), 0.0)).where(AgentRun.started_at >= start)
    )
    return float(spent or 0.0)


def start_of_day(now: datetime) -> datetime:
    """Midnight UTC of `now`'s day: the daily budget's day."""
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def _entered_state(session: AsyncSession, tasks: list[Task]) -> dict[int, datetime]:
    """When each task entered its current state (its newest event)."""
    if not tasks:
        return {}
    rows = await session.execute(
        select(TaskEvent.task_id, func.max(TaskEvent.at))
        .where(TaskEvent.task_id.in_([t.id for t in tasks]))
        .group_by(TaskEvent.task_id)
    )
    return {task_id: aware(at) for task_id, at in rows.all()}


async def _week_stats(session: AsyncSession, now: datetime) -> WeekStats:
    week_ago = now - timedelta(days=STATS_DAYS)
    outcomes = (
        await session.execute(
            select(Task.state, func.count(Task.id))
            .where(Task.created_at >= week_ago, Task.state.in_(OUTCOME_STATES))
            .group_by(Task.state)
        )
    ).all()
    finished = sum(count for _, count in outcomes)
    succeeded = sum(count for state, count in outcomes if state == State.DONE)
    events = (
        await session.execute(
            select(TaskEvent.task_id, TaskEvent.to_state, TaskEvent.at)
            .join(Task, Task.id == TaskEvent.task_id)
            .where(Task.created_at >= week_ago)
            .order_by(TaskEvent.id)
        )
    ).all()
    started: dict[int, datetime] = {}
    planned: dict[int, datetime] = {}
    delivered: dict[int, datetime] = {}
    for task_id, to_state, at in events:
        started.setdefault(task_id, aware(at))
        if to_state == State.AWAITING_APPROVAL:
            planned.setdefault(task_id, aware(at))
        elif to_state == State.DONE:
            delivered.setdefault(task_id, aware(at))
    return WeekStats(
        finished=finished,
        succeeded=succeeded,
        median_to_plan_s=_median_since(started, planned),
        median_to_pull_request_s=_median_since(started, delivered),
        spend_today_usd=await spend_since(session, start_of_day(now)),
        spend_week_usd=await spend_since(session, week_ago),
    )


def _median_since(started: dict[int, datetime], reached: dict[int, datetime]) -> float | None:
    waits = [(at - started[task_id]).total_seconds() for task_id, at in reached.items()]
    return statistics.median(waits) if waits else None


class HomeRefresher:
    """Republishes App Home for people who opened it lately, at most once per `interval_s`.

    Bounded: it remembers at most `max_viewers` people for `recent_s`, and owns at most one
    pending republish, which `aclose` cancels.
    """

    def __init__(
        self,
        publish: Callable[[str, int], Awaitable[None]],
        *,
        interval_s: float = 3.0,
        recent_s: float = 1800.0,
        max_viewers: int = 50,
    ) -> None:
        self.publish = publish
        self.interval_s = interval_s
        self.recent_s = recent_s
        self.max_viewers = max_viewers
        self._viewers: dict[str, tuple[float, int]] = {}  # user → (opened at, page)
        self._pending: asyncio.Task[None] | None = None

    def opened(self, user: str, page: int = 0) -> None:
        """`user` is looking at Home (page `page`): keep it fresh for a while."""
        self._viewers.pop(user, None)
        self._viewers[user] = (time.monotonic(), page)
        while len(self._viewers) > self.max_viewers:
            self._viewers.pop(next(iter(self._viewers)))

    def changed(self) -> None:
        """Tasks changed: republish soon, once, however many changes come meanwhile."""
        if not self._viewers or (self._pending is not None and not self._pending.done()):
            return
        self._pending = asyncio.get_running_loop().create_task(self._republish())

    async def aclose(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            await asyncio.gather(self._pending, return_exceptions=True)

    async def _republish(self) -> None:
        await asyncio.sleep(self.interval_s)
        cutoff = time.monotonic() - self.recent_s
        for user, (opened_at, page) in list(self._viewers.items()):
            if opened_at < cutoff:
                self._viewers.pop(user, None)
                continue
            try:
                await self.publish(user, page)
            except SlackApiError as error:
                log.warning("could not republish App Home for %s: %s", user, error)

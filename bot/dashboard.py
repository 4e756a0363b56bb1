"""The App Home dashboard's data: what runs, what waits, what it costs, read from the database.

`load_dashboard` returns a plain `Dashboard` that `views.home_view` turns into Block Kit: the
part everyone sees alike (`load_board`) with one person's own tasks (`with_mine`). Each is a
handful of queries that use indexes and return a bounded number of rows, so the cost does not
grow with history. `load_status` reads the few totals `/fix status` prints. `HomeRefresher`
republishes the Home of people who looked at it recently, when tasks change and their view
did.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_sdk.errors import SlackApiError
from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.config import Settings
from bot.models import State
from storage.jobs import JobKind, JobStatus
from storage.tables import AgentRun, FixWatch, Job, Task, TaskEvent, aware

log = logging.getLogger(__name__)

RECENT_PAGE_SIZE = 15
LIST_LIMIT = 10  # running steps, queued jobs, awaiting plans and "my tasks" shown at most
STATS_DAYS = 7
MEDIAN_SAMPLE = 500  # the newest tasks of the week that the medians are taken over
RUNNING_STATES = (State.PLANNING, State.REVISING, State.EXECUTING)
OUTCOME_STATES = (State.DONE, State.FAILED, State.REJECTED, State.CANCELLED, State.EXPIRED)


@dataclass(frozen=True)
class TaskSummary:
    """One task as Slack shows it, in its thread's messages and on the App Home: plain data
    that `views` renders, read from the task's row by `TaskSummary.of`."""

    id: int
    ref_kind: str
    ref_key: str
    ref_url: str | None
    title: str
    repo: str | None
    state: str
    failure: str | None  # why it failed, when it did
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
            ref_kind=task.ref_kind,
            ref_key=task.ref_key,
            ref_url=task.ref_url,
            title=task.title,
            repo=task.repo,
            state=task.state,
            failure=task.failure,
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


@dataclass(frozen=True)
class Status:
    """The totals `/fix status` prints: a handful of counts and sums, cheap at any size."""

    running: int
    queued: int
    awaiting: int
    spend_today_usd: float
    spend_week_usd: float
    daily_budget_usd: float

    def summary(self) -> str:
        """One paragraph for `/fix status`."""
        return (
            f"Running: {self.running} · queued: {self.queued} · "
            f"awaiting approval: {self.awaiting}\n"
            f"Spent today: ${self.spend_today_usd:,.2f} of the "
            f"${self.daily_budget_usd:,.2f} daily budget "
            f"(${self.spend_week_usd:,.2f} in the last {STATS_DAYS} days)."
        )


async def load_status(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> Status:
    """Read what `/fix status` prints, without building the dashboard."""
    now = datetime.now(UTC)
    async with sessions() as session:
        running, awaiting = await _running_and_awaiting(session)
        return Status(
            running=running,
            queued=await _queued_steps(session),
            awaiting=awaiting,
            spend_today_usd=await spend_since(session, start_of_day(now)),
            spend_week_usd=await spend_since(session, now - timedelta(days=STATS_DAYS)),
            daily_budget_usd=settings.limits.daily_budget_usd,
        )


async def load_dashboard(
    sessions: async_sessionmaker[AsyncSession], user: str, settings: Settings, page: int = 0
) -> Dashboard:
    """Read the dashboard for `user`, with page `page` of the recent tasks."""
    return await with_mine(sessions, await load_board(sessions, settings, page), user)


async def load_board(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, page: int = 0
) -> Dashboard:
    """Read the part of the dashboard everyone sees alike: all but "my tasks"."""
    now = datetime.now(UTC)
    async with sessions() as session:
        total = await session.scalar(select(func.count(Task.id))) or 0
        pages = max(1, -(-total // RECENT_PAGE_SIZE))
        page = min(max(0, page), pages - 1)
        running_total, awaiting_total = await _running_and_awaiting(session)
        running_tasks = list(
            await session.scalars(
                select(Task)
                .where(Task.state.in_(RUNNING_STATES))
                .order_by(Task.id)
                .limit(LIST_LIMIT)
            )
        )
        since = await _entered_state(session, running_tasks)
        queued = (
            await session.execute(
                select(Job, Task)
                .join(Task, Task.id == Job.task_id)
                # agent steps only
                .where(Job.status == JobStatus.QUEUED, Job.kind != JobKind.AFTER_MERGE)
                .order_by(Job.priority, Job.id)
                .limit(LIST_LIMIT)
            )
        ).all()
        queue_total = await _queued_steps(session)
        awaiting = list(
            await session.scalars(
                select(Task)
                .where(Task.state == State.AWAITING_APPROVAL)
                .order_by(Task.id)
                .limit(LIST_LIMIT)
            )
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
        stats = await _week_stats(session, now)
        return Dashboard(
            now=now,
            daily_budget_usd=settings.limits.daily_budget_usd,
            task_budget_usd=settings.limits.task_budget_usd,
            running=[TaskSummary.of(t, since.get(t.id)) for t in running_tasks],
            running_total=running_total,
            queue=[QueuedJob(TaskSummary.of(t), j.kind, aware(j.created_at)) for j, t in queued],
            queue_total=queue_total,
            awaiting=[TaskSummary.of(t) for t in awaiting],
            awaiting_total=awaiting_total,
            recent=[replace(TaskSummary.of(t), after_merge=watched.get(t.id)) for t in recent],
            stats=stats,
            page=page,
            pages=pages,
        )


async def with_mine(
    sessions: async_sessionmaker[AsyncSession], board: Dashboard, user: str
) -> Dashboard:
    """`board` with the tasks `user` asked for, newest first."""
    async with sessions() as session:
        mine = await session.scalars(
            select(Task).where(Task.requested_by == user).order_by(Task.id.desc()).limit(LIST_LIMIT)
        )
        return replace(board, mine=[TaskSummary.of(t) for t in mine])


async def spend_since(session: AsyncSession, start: datetime) -> float:
    """What the agent steps that started after `start` cost, in dollars."""
    spent = await session.scalar(
        select(func.coalesce(func.sum(AgentRun.cost_usd), 0.0)).where(AgentRun.started_at >= start)
    )
    return float(spent or 0.0)


def start_of_day(now: datetime) -> datetime:
    """Midnight UTC of `now`'s day: the daily budget's day."""
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def _running_and_awaiting(session: AsyncSession) -> tuple[int, int]:
    """How many tasks have a step running, and how many plans wait for a decision."""
    states = dict(
        (
            await session.execute(
                select(Task.state, func.count(Task.id))
                .where(Task.state.in_((*RUNNING_STATES, State.AWAITING_APPROVAL)))
                .group_by(Task.state)
            )
        ).all()
    )
    running = sum(states.get(state, 0) for state in RUNNING_STATES)
    return running, states.get(State.AWAITING_APPROVAL, 0)


async def _queued_steps(session: AsyncSession) -> int:
    """How many agent steps wait for a worker."""
    queued = await session.scalar(
        select(func.count(Job.id)).where(
            Job.status == JobStatus.QUEUED, Job.kind != JobKind.AFTER_MERGE
        )
    )
    return queued or 0


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
    """The week's figures, from counts and sums over indexed columns.

    The medians come from the newest MEDIAN_SAMPLE tasks of the week, so they cost the same
    however busy the week was.
    """
    week_ago = now - timedelta(days=STATS_DAYS)
    # Counted over the created_at index alone: with a filter or grouping on the state,
    # SQLite's planner would scan the state's index over all of history instead.
    finished, succeeded = (
        await session.execute(
            select(
                func.count(case((Task.state.in_(OUTCOME_STATES), 1))),
                func.count(case((Task.state == State.DONE, 1))),
            ).where(Task.created_at >= week_ago)
        )
    ).one()
    newest = (
        select(Task.id)
        .where(Task.created_at >= week_ago)
        .order_by(Task.created_at.desc())
        .limit(MEDIAN_SAMPLE)
    )
    milestones = (
        await session.execute(
            select(
                func.min(TaskEvent.at),
                func.min(case((TaskEvent.to_state == State.AWAITING_APPROVAL, TaskEvent.at))),
                func.min(case((TaskEvent.to_state == State.DONE, TaskEvent.at))),
            )
            .where(TaskEvent.task_id.in_(newest.scalar_subquery()))
            .group_by(TaskEvent.task_id)
        )
    ).all()
    return WeekStats(
        finished=finished,
        succeeded=succeeded,
        median_to_plan_s=_median_wait([(started, planned) for started, planned, _ in milestones]),
        median_to_pull_request_s=_median_wait([(started, done) for started, _, done in milestones]),
        spend_today_usd=await spend_since(session, start_of_day(now)),
        spend_week_usd=await spend_since(session, week_ago),
    )


def _median_wait(spans: list[tuple[datetime, datetime | None]]) -> float | None:
    """The median time from the first to the second moment, over the spans that reached it."""
    waits = [(aware(end) - aware(start)).total_seconds() for start, end in spans if end is not None]
    return statistics.median(waits) if waits else None


@dataclass(frozen=True)
class _Viewer:
    opened_at: float  # time.monotonic()
    page: int
    published: str | None = None  # the hash of the view last published for them


class HomeRefresher:
    """Republishes App Home for people who opened it lately, at most once per `interval_s`,
    and only for those whose view changed since it was last published.

    `board(page)` reads what everyone sees alike (read once per page and republish),
    `render(board, user)` makes one person's view of it, `publish(user, view)` sends it.

    Bounded: it remembers at most `max_viewers` people for `recent_s`, and owns at most one
    pending republish, which `aclose` cancels.
    """

    def __init__(
        self,
        board: Callable[[int], Awaitable[Dashboard]],
        render: Callable[[Dashboard, str], Awaitable[dict[str, Any]]],
        publish: Callable[[str, dict[str, Any]], Awaitable[None]],
        *,
        interval_s: float = 3.0,
        recent_s: float = 1800.0,
        max_viewers: int = 50,
    ) -> None:
        self.board = board
        self.render = render
        self.publish = publish
        self.interval_s = interval_s
        self.recent_s = recent_s
        self.max_viewers = max_viewers
        self._viewers: dict[str, _Viewer] = {}
        self._pending: asyncio.Task[None] | None = None

    async def show(self, user: str, page: int = 0) -> None:
        """`user` opened Home on page `page`: publish it now, and keep it fresh for a while."""
        self._viewers.pop(user, None)
        self._viewers[user] = _Viewer(time.monotonic(), page)
        while len(self._viewers) > self.max_viewers:
            self._viewers.pop(next(iter(self._viewers)))
        await self._publish(user, page, await self.board(page), always=True)

    def changed(self) -> None:
        """Tasks changed: republish soon, once, however many changes come meanwhile."""
        if not self._viewers or (self._pending is not None and not self._pending.done()):
            return
        self._pending = asyncio.get_running_loop().create_task(self._republish_later())

    async def refresh(self) -> None:
        """Republish Home for the recent viewers whose view changed; forget the others."""
        cutoff = time.monotonic() - self.recent_s
        boards: dict[int, Dashboard] = {}
        for user, viewer in list(self._viewers.items()):
            if viewer.opened_at < cutoff:
                self._viewers.pop(user, None)
                continue
            if viewer.page not in boards:
                boards[viewer.page] = await self.board(viewer.page)
            try:
                await self._publish(user, viewer.page, boards[viewer.page], always=False)
            except SlackApiError as error:
                log.warning("could not republish App Home for %s: %s", user, error)

    async def aclose(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            await asyncio.gather(self._pending, return_exceptions=True)

    async def _republish_later(self) -> None:
        await asyncio.sleep(self.interval_s)
        await self.refresh()

    async def _publish(self, user: str, page: int, board: Dashboard, *, always: bool) -> None:
        view = await self.render(board, user)
        digest = hashlib.sha256(json.dumps(view, sort_keys=True).encode()).hexdigest()
        viewer = self._viewers.get(user)
        if not always and viewer is not None and viewer.published == digest:
            return
        await self.publish(user, view)
        viewer = self._viewers.get(user)
        if viewer is not None and viewer.page == page:  # still looking at that page
            self._viewers[user] = replace(viewer, published=digest)

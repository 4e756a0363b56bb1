"""The dashboard's figures from SQL, checked against a plain count over the same rows, on
SQLite and PostgreSQL; App Home republished only for those whose view changed."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from history import Rows, make_history, seed_history
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot import views
from bot.config import Settings
from bot.dashboard import (
    OUTCOME_STATES,
    RECENT_PAGE_SIZE,
    RUNNING_STATES,
    STATS_DAYS,
    Dashboard,
    HomeRefresher,
    load_board,
    load_dashboard,
    load_status,
    start_of_day,
    with_mine,
)
from bot.local.slack import LocalSlack
from bot.models import State
from storage.tables import Task


def settings() -> Settings:
    return Settings(_env_file=None, slack_bot_token="xoxb-1", slack_app_token="xapp-1")  # type: ignore[call-arg]


def medians_by_hand(rows: Rows, week_ago: datetime) -> tuple[float | None, float | None]:
    """Time from a task's first event to its first plan, and to done, as a median."""
    recent = {t["id"] for t in rows.tasks if t["created_at"] >= week_ago}
    started: dict[int, datetime] = {}
    planned: dict[int, float] = {}
    done: dict[int, float] = {}
    for event in rows.events:
        task_id, at, state = event["task_id"], event["at"], event["to_state"]
        if task_id not in recent:
            continue
        started.setdefault(task_id, at)
        if state == State.AWAITING_APPROVAL:
            planned.setdefault(task_id, (at - started[task_id]).total_seconds())
        if state == State.DONE:
            done.setdefault(task_id, (at - started[task_id]).total_seconds())

    def median(waits: dict[int, float]) -> float | None:
        return statistics.median(waits.values()) if waits else None

    return median(planned), median(done)


def spend_by_hand(rows: Rows, since: datetime) -> float:
    return sum(run["cost_usd"] for run in rows.runs if run["started_at"] >= since)


async def test_the_dashboard_and_status_match_a_count_by_hand(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    now = datetime.now(UTC)
    rows = make_history(400, now, days=2 * STATS_DAYS)
    await seed_history(sessions, rows)

    dashboard = await load_dashboard(sessions, "U_USER03", settings())
    status = await load_status(sessions, settings())

    week_ago = dashboard.now - timedelta(days=STATS_DAYS)
    week = [t for t in rows.tasks if t["created_at"] >= week_ago]
    finished = [t for t in week if t["state"] in OUTCOME_STATES]
    stats = dashboard.stats
    assert 50 < len(week) < 400 and finished  # the week holds some of the history, not all
    assert stats.finished == len(finished)
    assert stats.succeeded == len([t for t in finished if t["state"] == State.DONE])
    to_plan, to_pr = medians_by_hand(rows, week_ago)
    assert stats.median_to_plan_s == pytest.approx(to_plan)
    assert stats.median_to_pull_request_s == pytest.approx(to_pr)
    today = spend_by_hand(rows, start_of_day(dashboard.now))
    assert 0 < today < spend_by_hand(rows, week_ago)
    assert stats.spend_today_usd == pytest.approx(today)
    assert stats.spend_week_usd == pytest.approx(spend_by_hand(rows, week_ago))

    def ids(state: str) -> list[int]:
        return [t["id"] for t in rows.tasks if t["state"] == state]

    running = sorted(i for state in RUNNING_STATES for i in ids(state))
    queued = [j for j in rows.jobs if j["status"] == "queued"]
    assert [t.id for t in dashboard.running] == running[:10]
    assert dashboard.running_total == len(running)
    assert dashboard.queue_total == len(queued)
    assert [q.task.id for q in dashboard.queue] == [j["task_id"] for j in queued][:10]
    assert dashboard.awaiting_total == len(ids(State.AWAITING_APPROVAL))
    assert [t.id for t in dashboard.awaiting] == ids(State.AWAITING_APPROVAL)[:10]
    assert [t.id for t in dashboard.recent] == list(range(400, 400 - RECENT_PAGE_SIZE, -1))
    assert dashboard.pages == -(-400 // RECENT_PAGE_SIZE)
    mine = [t["id"] for t in rows.tasks if t["requested_by"] == "U_USER03"]
    assert [t.id for t in dashboard.mine] == mine[::-1][:10]

    assert (status.running, status.queued, status.awaiting) == (
        len(running),
        len(queued),
        len(ids(State.AWAITING_APPROVAL)),
    )
    assert status.spend_today_usd == pytest.approx(today)
    assert status.spend_week_usd == pytest.approx(stats.spend_week_usd)
    assert f"Running: {len(running)} · queued: {len(queued)}" in status.summary()


async def test_home_is_republished_only_for_those_whose_view_changed(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    now = datetime.now(UTC)
    await seed_history(sessions, make_history(2 * RECENT_PAGE_SIZE, now, days=3))
    async with sessions() as session, session.begin():
        # A running step's elapsed time changes every second, and with it everyone's view.
        await session.execute(
            update(Task).where(Task.state.in_(RUNNING_STATES)).values(state=State.FAILED)
        )

    async with LocalSlack() as slack:
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)

        async def board(page: int) -> Dashboard:
            return await load_board(sessions, settings(), page)

        async def render(board: Dashboard, user: str) -> dict[str, Any]:
            dashboard = await with_mine(sessions, board, user)
            return views.home_view(dashboard, user, is_approver=True)

        async def publish(user: str, view: dict[str, Any]) -> None:
            await client.views_publish(user_id=user, view=view)

        home = HomeRefresher(board, render, publish)
        await home.show("U_NOBODY_1")
        await home.show("U_NOBODY_2")
        await home.show("U_NOBODY_3", page=1)  # the older tasks
        assert slack.call_counts()["views.publish"] == 3

        await home.refresh()  # nothing changed
        assert slack.call_counts()["views.publish"] == 3

        async with sessions() as session, session.begin():
            newest = 2 * RECENT_PAGE_SIZE
            await session.execute(update(Task).where(Task.id == newest).values(title="Renamed"))
        await home.refresh()
        assert slack.call_counts()["views.publish"] == 5  # page 1 does not show that task
        assert "Renamed" in str(slack.home_view("U_NOBODY_1"))
        assert "Renamed" not in str(slack.home_view("U_NOBODY_3"))

        await home.show("U_NOBODY_3", page=1)  # opening Home always publishes
        assert slack.call_counts()["views.publish"] == 6
        assert not slack.violations

"""A made-up history of tasks for the dashboard: tasks with their events, agent runs and jobs.

`seed_history` writes it in bulk (fast enough for 10,000 tasks); `Rows` hands the same rows
back so a test can work out the dashboard's figures by hand. Used by tests/test_dashboard.py
and benchmarks/dashboard_scale.py.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.models import State
from storage.tables import AgentRun, Job, Task, TaskEvent

USERS = [f"U_USER{n:02d}" for n in range(20)]
OPEN_TASKS = 40  # only the newest tasks may still be open: older ones have all ended
# The paths a task takes, and how often: most end with a pull request.
FINISHED_PATHS: list[tuple[list[State], int]] = [
    ([State.QUEUED, State.PLANNING, State.AWAITING_APPROVAL, State.EXECUTING, State.DONE], 60),
    ([State.QUEUED, State.PLANNING, State.FAILED], 8),
    ([State.QUEUED, State.PLANNING, State.AWAITING_APPROVAL, State.REJECTED], 8),
    ([State.QUEUED, State.PLANNING, State.AWAITING_APPROVAL, State.EXPIRED], 4),
    ([State.QUEUED, State.CANCELLED], 4),
]
OPEN_PATHS: list[tuple[list[State], int]] = [
    ([State.QUEUED, State.PLANNING, State.AWAITING_APPROVAL], 6),
    ([State.QUEUED, State.PLANNING, State.AWAITING_APPROVAL, State.EXECUTING], 4),
    ([State.QUEUED, State.PLANNING], 3),
    ([State.QUEUED], 3),
]
STEPS = {State.PLANNING: "planning", State.EXECUTING: "execution"}


@dataclass
class Rows:
    tasks: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)


def make_history(n_tasks: int, now: datetime, *, days: float, seed: int = 13) -> Rows:
    """`n_tasks` tasks created over the `days` before `now`, oldest first."""
    rng = random.Random(seed)
    every = FINISHED_PATHS + OPEN_PATHS
    rows = Rows()
    span_s = days * 86400
    for task_id in range(1, n_tasks + 1):
        created = now - timedelta(seconds=span_s * (1 - task_id / (n_tasks + 1)))
        paths = every if task_id > n_tasks - OPEN_TASKS else FINISHED_PATHS
        path = rng.choices([path for path, _ in paths], [weight for _, weight in paths])[0]
        at = created
        cost = 0.0
        for number, state in enumerate(path):
            if number:
                at += timedelta(seconds=rng.uniform(20, 900))
                at = min(at, now)
            rows.events.append(
                {
                    "task_id": task_id,
                    "at": at,
                    "from_state": path[number - 1] if number else None,
                    "to_state": state,
                    "actor": None,
                    "detail": {},
                }
            )
            if state in STEPS:
                run_cost = round(rng.uniform(0.05, 2.0), 4)
                cost += run_cost
                rows.runs.append(
                    {
                        "task_id": task_id,
                        "step": STEPS[state],
                        "outcome": "success",
                        "cost_usd": run_cost,
                        "started_at": at,
                    }
                )
        state = path[-1]
        if state in (State.QUEUED, State.PLANNING, State.EXECUTING):
            rows.jobs.append(
                {
                    "task_id": task_id,
                    "kind": STEPS.get(state, "planning"),
                    "status": "queued" if state == State.QUEUED else "running",
                    "created_at": at,
                    "run_after": at,
                }
            )
        rows.tasks.append(
            {
                "id": task_id,
                "state": state,
                "ref_kind": "sentry",
                "ref_key": f"SHOP-{task_id}",
                "title": f"Error {task_id} in checkout",
                "context": "",
                "requested_by": rng.choice(USERS),
                "channel_id": "C_GENERAL",
                "thread_ts": f"1700000000.{task_id:06d}",
                "plan_version": 1 if State.AWAITING_APPROVAL in path else 0,
                "pr_url": f"https://github.com/acme/shop/pull/{task_id}"
                if state == State.DONE
                else None,
                "cost_usd": cost,
                "created_at": created,
                "updated_at": at,
            }
        )
    return rows


async def seed_history(sessions: async_sessionmaker[AsyncSession], rows: Rows) -> None:
    """Insert `rows` in a few bulk statements."""
    async with sessions() as session, session.begin():
        for table, values in (
            (Task, rows.tasks),
            (TaskEvent, rows.events),
            (AgentRun, rows.runs),
            (Job, rows.jobs),
        ):
            for start in range(0, len(values), 2000):
                await session.execute(insert(table), values[start : start + 2000])

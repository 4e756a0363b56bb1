"""App Home, `/fix status` and Home republishing at 100 and 10,000 tasks, SQLite and PostgreSQL.

    .venv/bin/python benchmarks/dashboard_scale.py [--sizes 100 10000] [--runs 3] [--days 7]

For each database and size it seeds a fresh database with tests/history.py's made-up
history (tasks with their events, agent runs and jobs, created over the last `--days`
days: 7 puts every task in the dashboard's week, the worst case) and times:

- **Home**: `load_dashboard` and `views.home_view` for one person, page 1;
- **status**: what `/fix status` reads (`load_status`);
- **republish, 50 changed**: `HomeRefresher.refresh` for 50 people who opened Home, after a
  change every one of them sees (the newest task renamed): 50 renders and 50 `views.publish`
  calls to a LocalSlack on loopback;
- **republish, none changed**: the same right after, with nothing changed since.

Each run reports the median of `--repeat` calls (republish: one call); the table gives the
min / median / max over `--runs` runs, in milliseconds. PostgreSQL is a throwaway cluster
started as tests/postgres.py starts it (PostgreSQL 15 from /usr/lib/postgresql/15/bin).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from history import make_history, seed_history  # noqa: E402
from postgres import PostgresServer, _cluster  # noqa: E402
from slack_sdk.web.async_client import AsyncWebClient  # noqa: E402
from sqlalchemy import func, select, text, update  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker  # noqa: E402

from bot import views  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.dashboard import (  # noqa: E402
    Dashboard,
    HomeRefresher,
    load_board,
    load_dashboard,
    load_status,
    with_mine,
)
from bot.local.slack import LocalSlack  # noqa: E402
from storage.db import create_engine, migrate, sessionmaker  # noqa: E402
from storage.tables import Task  # noqa: E402

VIEWERS = 50
SETTINGS = Settings(_env_file=None, slack_bot_token="xoxb-1", slack_app_token="xapp-1")  # type: ignore[call-arg]
CASES = ["Home", "status", "republish, 50 changed", "republish, none changed"]


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await call()
    return (time.perf_counter() - started) * 1000


async def measure(
    sessions: async_sessionmaker[AsyncSession], slack: LocalSlack, repeat: int
) -> dict[str, float]:
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)

    async def board(page: int) -> Dashboard:
        return await load_board(sessions, SETTINGS, page)

    async def render(board: Dashboard, user: str) -> dict[str, Any]:
        dashboard = await with_mine(sessions, board, user)
        return views.home_view(dashboard, user, is_approver=True)

    async def one_home() -> dict[str, Any]:
        dashboard = await load_dashboard(sessions, "U_USER03", SETTINGS)
        return views.home_view(dashboard, "U_USER03", is_approver=True)

    async def publish(user: str, view: dict[str, Any]) -> None:
        await client.views_publish(user_id=user, view=view)

    async def status() -> str:
        return (await load_status(sessions, SETTINGS)).summary()

    async def rename_newest() -> None:
        async with sessions() as session, session.begin():
            newest = await session.scalar(select(func.max(Task.id)))
            renamed = f"Renamed at {time.monotonic_ns()}"
            await session.execute(update(Task).where(Task.id == newest).values(title=renamed))

    home = HomeRefresher(board, render, publish)
    for n in range(VIEWERS):
        await home.show(f"U_USER{n:02d}")
    await one_home()  # warm the connection pool and the database's caches
    homes = [await timed(one_home) for _ in range(repeat)]
    statuses = [await timed(status) for _ in range(repeat)]
    figures = {"Home": statistics.median(homes), "status": statistics.median(statuses)}
    await rename_newest()
    figures["republish, 50 changed"] = await timed(home.refresh)
    figures["republish, none changed"] = await timed(home.refresh)
    return figures


async def bench(url: str, size: int, days: float, runs: int, repeat: int) -> list[dict[str, float]]:
    engine = create_engine(url)
    try:
        await migrate(engine)
        sessions = sessionmaker(engine)
        await seed_history(sessions, make_history(size, datetime.now(UTC), days=days))
        if engine.dialect.name == "postgresql":  # as autovacuum would have by then
            async with engine.connect() as connection:
                connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await connection.execute(text("VACUUM ANALYZE"))
        async with LocalSlack() as slack:
            return [await measure(sessions, slack, repeat) for _ in range(runs)]
    finally:
        await engine.dispose()


def report(engine: str, size: int, results: list[dict[str, float]]) -> None:
    for case in CASES:
        values = sorted(run[case] for run in results)
        print(
            f"| {engine} | {size:,} | {case} | {values[0]:.1f} | "
            f"{statistics.median(values):.1f} | {values[-1]:.1f} |",
            flush=True,
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--engines", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print("| engine | tasks | case | min ms | median ms | max ms |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    with ExitStack() as stack, tempfile.TemporaryDirectory() as folder:
        server: PostgresServer | None = None
        for engine in args.engines:
            for size in args.sizes:
                if engine == "sqlite":
                    url = f"sqlite+aiosqlite:///{folder}/dashboard-{size}.db"
                else:
                    server = server or stack.enter_context(_cluster())
                    url = server.create_database(f"dashboard_{size}")
                results = await bench(url, size, args.days, args.runs, args.repeat)
                report(engine, size, results)


if __name__ == "__main__":
    asyncio.run(main())

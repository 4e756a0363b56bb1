"""Faults, not only crashes: an operator's bad day, end to end through the real app.

Each test injects one fault (a service answering 503/429, the database away, a replica
paused past its lease, an envelope delivered twice, `kill -9` between two side effects,
Slack away at shutdown, a revoked token) and checks what counts: no task lost, nothing
done twice, every failure told. Figures are printed (`pytest -s`) for benchmarks/README.md.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import time

from test_cli import fixbot
from world import World, seed_sentry_issue


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def db(world: World) -> sqlite3.Connection:
    return sqlite3.connect(world.root / "fixbot.db")


async def wait_for_log(world: World, text: str, replica: int = 0, timeout: float = 60) -> None:
    """Wait until the replica's log holds `text` (bounded generously for a loaded machine)."""
    await world.slack.wait_for(lambda: text in world.app_log(replica), timeout=timeout, what=text)


# Start and stop


async def test_a_revoked_token_exits_2_with_doctors_words(world: World) -> None:
    world.env["SLACK_BOT_TOKEN"] = "xoxb-revoked"  # the local Slack answers invalid_auth
    await world.start_app(wait=False)
    process = world.process
    assert process is not None
    code = await asyncio.to_thread(process.wait, 60)
    log = world.app_log()
    assert code == 2, log
    assert "Slack refused SLACK_BOT_TOKEN (invalid_auth)" in log
    assert "OAuth & Permissions" in log and "Traceback" not in log


async def test_an_unreachable_database_at_start_exits_2_without_a_traceback(
    world: World,
) -> None:
    world.env["DATABASE_URL"] = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/fixbot"
    await world.start_app(wait=False)
    process = world.process
    assert process is not None
    code = await asyncio.to_thread(process.wait, 90)
    log = world.app_log()
    assert code == 2, log
    assert "does not answer: check DATABASE_URL" in log and "Traceback" not in log


async def test_sigterm_while_slack_is_unreachable_stops_within_the_grace_period(
    world: World,
) -> None:
    world.env["SLACK_API_URL"] = f"http://127.0.0.1:{free_port()}/api/"  # nobody listens
    world.env.pop("ANTHROPIC_API_KEY")
    await world.start_app(wait=False)
    await wait_for_log(world, "Fixbot ")
    await wait_for_log(world, "starting: Slack workspace unknown")
    await wait_for_log(world, "Failed to connect")  # the Socket Mode client is retrying
    started = time.monotonic()
    code = await world.stop_app(signal.SIGTERM, timeout=30)
    stopped_s = time.monotonic() - started
    log = world.app_log()
    assert code == 0, log
    assert stopped_s < 30
    assert "neither ANTHROPIC_API_KEY nor CLAUDE_CODE_OAUTH_TOKEN" in log
    assert "Traceback" not in log
    print(f"SIGTERM with Slack unreachable: exited in {stopped_s:.1f} s")


async def test_the_start_up_line_names_what_is_served(world: World) -> None:
    world.config["repos"] = []
    await world.start_app()
    await wait_for_log(world, "no repos in")
    line = next(
        json.loads(line)["message"]
        for line in world.app_log().splitlines()
        if "starting: Slack workspace" in line
    )
    assert line.startswith("Fixbot 0.")
    assert "workspace Local" in line and "repos none" in line
    assert "database sqlite+aiosqlite" in line and "HTTP off" in line


async def test_tasks_create_with_slack_down_leaves_no_orphan(world: World) -> None:
    seed_sentry_issue(world)
    dead_slack = f"http://127.0.0.1:{free_port()}/api/"
    run = await fixbot(world, "tasks", "create", "SHOP-1", SLACK_API_URL=dead_slack)
    assert run.code != 0
    assert "nothing was started" in run.err and "Traceback" not in run.err
    with db(world) as connection:
        tasks = connection.execute("select state, thread_ts from tasks").fetchall()
        jobs = connection.execute("select count(*) from jobs").fetchone()
    assert tasks == [("failed", None)] and jobs == (0,)

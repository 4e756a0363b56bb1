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
from typing import Any

from sqlalchemy import text
from test_cli import fixbot
from test_conversation import buttons as fixbot_buttons
from test_conversation import post_alert, sentry_alert
from test_core_loop import buttons, script_execution, script_planning, start_plan, thread_texts
from world import CHANNEL, World, seed_sentry_issue

from storage.db import create_engine


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


# Services answering 503 and 429 for a while


async def test_sentry_github_and_slack_errors_are_waited_out(world: World) -> None:
    seed_sentry_issue(world)
    script_planning(world)
    script_execution(world)
    world.sentry.faults.fail(503, times=2)  # the first two planning attempts cannot resolve
    world.slack.force_429("chat.postMessage", retry_after=1, times=2)
    await world.start_app()
    started = time.monotonic()
    thread_ts, plan = await start_plan(world)
    planned_s = time.monotonic() - started
    texts = thread_texts(world, thread_ts)
    assert any("passing reason" in t and "HTTP 503" in t and "attempt 3" in t for t in texts)

    world.github.faults.fail(503, times=1, method="GET", path="/pulls")  # at delivery
    await world.slack.click_button(CHANNEL, plan["ts"], "approve", user="UBOB01")
    await world.slack.wait_for(
        lambda: any("Pull request ready" in t for t in thread_texts(world, thread_ts)),
        timeout=120,
        what="the pull request after GitHub's 503",
    )
    delivered_s = time.monotonic() - started
    texts = thread_texts(world, thread_ts)
    assert any("execution step failed for a passing reason" in t for t in texts), texts
    assert not any("Retry" in buttons(m) for m in world.slack.thread(CHANNEL, thread_ts))
    assert world.sentry.faults.failed == 2 and world.github.faults.failed == 1
    pulls = world.github.pulls("acme/shop")
    assert len(pulls) == 1 and not pulls[0].draft
    assert world.model.unexpected == []  # the resumed execution did not run the agent again
    print(
        f"503/429 waited out: plan after {planned_s:.1f} s, pull request after {delivered_s:.1f} s"
    )


# The same trigger twice


async def test_the_same_envelope_delivered_twice_makes_one_task(world: World) -> None:
    seed_sentry_issue(world)
    seed_sentry_issue(world, "SHOP-2")
    script_planning(world)
    script_planning(world, "SHOP-2")
    await world.start_app()
    ack = await world.slack.slash_command("SHOP-1")
    again = await world.slack.deliver_again(ack.envelope_id)
    assert again.retry_attempt == 1
    await world.slack.mention(CHANNEL, "<@UFIXBOT> fix SHOP-2", user="U_ALICE")
    mention_ack = world.slack.acks[-1]
    await world.slack.deliver_again(mention_ack.envelope_id)
    await world.slack.wait_for(
        lambda: sum(bool(buttons(m)) for m in all_thread_messages(world)) == 2,
        timeout=90,
        what="two plans",
    )
    with db(world) as connection:
        refs = [ref for (ref,) in connection.execute("select ref_key from tasks order by id")]
    assert refs == ["SHOP-1", "SHOP-2"]
    assert len(world.slack.messages(CHANNEL)) == 2  # SHOP-1's thread and the mention's
    assert world.app_log().count("slack trigger") == 2  # each second delivery, ignored


def all_thread_messages(world: World) -> list[dict[str, Any]]:
    return [
        message
        for parent in world.slack.messages(CHANNEL)
        for message in world.slack.thread(CHANNEL, parent["ts"])
    ]


async def test_plan_a_fix_clicked_on_two_replicas_makes_one_task(
    world: World, postgres_database: str
) -> None:
    world.env["DATABASE_URL"] = postgres_database
    issue_id = seed_sentry_issue(world)
    script_planning(world)
    await world.start_app(replica=0, wait=False)
    await world.start_app(replica=1, wait=False)
    await world.slack.wait_connected(n=2, timeout=60)
    alert_ts = await post_alert(world, sentry_alert(world, issue_id))
    offer = await world.slack.wait_for(
        lambda: next((m for m in world.slack.thread(CHANNEL, alert_ts) if fixbot_buttons(m)), None),
        what="the Plan a fix offer",
    )
    # Envelopes go to the open connections in turn: one click reaches each replica.
    await asyncio.gather(
        world.slack.click_button(CHANNEL, offer["ts"], "plan_alert", user="U_BOB"),
        world.slack.click_button(CHANNEL, offer["ts"], "plan_alert", user="U_CAROL"),
    )
    await world.slack.wait_for(
        lambda: any(
            fixbot_buttons(m)[:1] == ["Approve"] for m in world.slack.thread(CHANNEL, alert_ts)
        ),
        timeout=90,
        what="the plan",
    )
    engine = create_engine(postgres_database)
    try:
        async with engine.connect() as connection:
            tasks = (await connection.execute(text("select count(*) from tasks"))).scalar()
    finally:
        await engine.dispose()
    assert tasks == 1
    refused = [e["text"] for e in world.slack.ephemerals()]
    assert any("already under way" in text for text in refused), refused

"""The job pool end to end: cancel, timeout, budget, stale work and crash recovery."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

from fakes.anthropic import Failure, overloaded, pause, structured, text, tool
from test_core_loop import (
    TITLE,
    buttons,
    failure_report,
    script_planning,
    start_plan,
    thread_texts,
)
from world import CHANNEL, FIXED_PRICING, NEW_TEST, World, plan_data, seed_sentry_issue

from repos.workspace import branch_name

EXECUTION_MATCH = "Implement the approved plan for SHOP-1"
LONG_AGO = "2000-01-01 00:00:00.000000"  # as SQLAlchemy writes times to SQLite


def claude_processes(root_pid: int) -> list[int]:
    """Claude Code processes descended from `root_pid` (the app)."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == root_pid:
                return True
        return False

    return [pid for pid, command in commands.items() if "claude" in command and descends(pid)]


async def start_slow_planning(world: World, seconds: float = 30) -> str:
    """/fix with a model that takes `seconds` over its first answer; returns the thread ts."""
    seed_sentry_issue(world)
    world.model.script([[pause(seconds), structured(plan_data())]], match="Plan a fix for SHOP-1")
    await world.start_app()
    await world.slack.slash_command("SHOP-1")
    parent = (await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1]))[0]
    # Generous bounds: a worker process (tests/test_workers.py) starts before it claims.
    await world.slack.wait_for(
        lambda: any("Planning" in m["text"] for m in world.slack.thread(CHANNEL, parent["ts"])[1:]),
        timeout=60,
        what="the Planning status",
    )
    assert world.process is not None
    await world.slack.wait_for(
        lambda: claude_processes(world.process.pid), timeout=60, what="Claude Code"
    )
    return str(parent["ts"])


async def test_cancel_stops_a_running_step(world: World) -> None:
    # The model would answer after 120 s: a step gone well before was stopped by the cancel.
    thread_ts = await start_slow_planning(world, seconds=120)
    assert world.process is not None
    started = time.monotonic()
    await world.slack.mention(CHANNEL, "<@UFIXBOT> cancel", user="UBOB01", thread_ts=thread_ts)
    await world.slack.wait_for(
        lambda: not claude_processes(world.process.pid), timeout=60, what="no Claude Code left"
    )
    print(f"the step stopped {time.monotonic() - started:.1f} s after the cancel")
    texts = [m["text"] for m in world.slack.thread(CHANNEL, thread_ts)]
    assert any("Cancelled by <@UBOB01>" in text for text in texts)
    await world.slack.wait_for(
        lambda: any(
            "cancelled" in m["text"].lower() and "Planning" in m["text"]
            for m in world.slack.thread(CHANNEL, thread_ts)[1:]
        ),
        what="the status message's final edit",
    )


async def test_a_step_past_its_timeout_is_stopped_and_reported(world: World) -> None:
    world.config["limits"]["planning_timeout_s"] = 3
    seed_sentry_issue(world)
    world.model.script([[pause(120), structured(plan_data())]], match="Plan a fix for SHOP-1")
    await world.start_app()
    assert world.process is not None
    # Not waiting to see Claude Code start: on a busy machine the 3 s may be up before.
    await world.slack.slash_command("SHOP-1")
    thread_ts = (await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1]))[0]["ts"]
    failure = await failure_report(world, thread_ts, timeout=60)
    assert "ran past its 3 s limit" in failure["text"]
    await world.slack.wait_for(lambda: not claude_processes(world.process.pid), timeout=60)


async def test_a_step_that_reaches_the_task_budget_stops_and_says_so(world: World) -> None:
    world.config["limits"]["task_budget_usd"] = 0.01
    seed_sentry_issue(world)
    worktree = world.worktree(branch_name("SHOP-1", TITLE))
    world.model.script(
        [
            [tool("Read", {"file_path": str(worktree / "shop" / "pricing.py")})],
            [tool("Read", {"file_path": str(worktree / "shop" / "pricing.py")})],
            [structured(plan_data())],
        ],
        match="Plan a fix for SHOP-1",
    )
    await world.start_app()
    await world.slack.slash_command("SHOP-1")
    parent = (await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1]))[0]
    failure = await failure_report(world, parent["ts"], timeout=30)
    assert "budget of $0.01" in failure["text"]
    assert not any(buttons(m)[:1] == ["Approve"] for m in world.slack.thread(CHANNEL, parent["ts"]))


async def restart_until_pull_request(world: World, thread_ts: str, timeout: float) -> float:
    """Start the app again and wait for the thread's pull request: the seconds that took."""
    restarted = time.monotonic()
    await world.start_app()
    await world.slack.wait_for(
        lambda: any("Pull request ready" in t for t in thread_texts(world, thread_ts)),
        timeout=timeout,
        what="the pull request after the restart",
    )
    return time.monotonic() - restarted


def age(world: World, sql: str) -> None:
    """Make rows old, as a clock run on would: `sql` sets a time column to LONG_AGO."""
    with sqlite3.connect(world.root / "fixbot.db") as connection:
        connection.execute(sql, {"old": LONG_AGO})


def job_statuses(world: World) -> list[tuple[str, str]]:
    with sqlite3.connect(world.root / "fixbot.db") as connection:
        return connection.execute("select kind, status from jobs order by id").fetchall()


async def test_a_job_that_waits_too_long_in_the_queue_fails_with_the_reason(world: World) -> None:
    world.config["concurrency"] = {"planning": 1, "execution": 1}
    world.config["limits"].update(queued_ttl_hours=24, sweep_interval_s=0.5)
    seed_sentry_issue(world, "SHOP-2")
    thread_ts = await start_slow_planning(world, seconds=120)
    await world.slack.slash_command("SHOP-2")
    second = await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[1:2])
    await world.slack.wait_for(
        lambda: job_statuses(world) == [("planning", "running"), ("planning", "queued")],
        what="SHOP-2 waiting behind SHOP-1",
    )
    age(world, "update jobs set created_at = :old where status = 'queued'")  # years in line

    failure = await failure_report(world, second[0]["ts"], timeout=60)
    assert "waited in the queue" in failure["text"]
    assert not any("Retry" in buttons(m) for m in world.slack.thread(CHANNEL, thread_ts))


async def test_kill_9_mid_execution_then_restart_ends_with_one_pull_request(
    world: World,
) -> None:
    world.config["limits"].update(job_lease_s=2, sweep_interval_s=0.5)
    seed_sentry_issue(world)
    script_planning(world)
    worktree = world.worktree(branch_name("SHOP-1", TITLE))
    test_command = world.config["repos"][0]["test_command"]
    doomed = world.model.script(
        [
            [
                tool(
                    "Write",
                    {"file_path": str(worktree / "tests/test_discount.py"), "content": NEW_TEST},
                )
            ],
            [pause(30), text("never answered: the app dies first")],
            # The restarted app resumes the same Claude Code session from the database.
            [
                tool(
                    "Write",
                    {"file_path": str(worktree / "shop/pricing.py"), "content": FIXED_PRICING},
                )
            ],
            [tool("Bash", {"command": test_command})],
            [text("Done.")],
        ],
        match=EXECUTION_MATCH,
    )
    await world.start_app()
    thread_ts, plan = await start_plan(world)
    await world.slack.click_button(CHANNEL, plan["ts"], "approve", user="UBOB01")
    assert world.process is not None
    await world.slack.wait_for(
        lambda: doomed.served == 2, what="the execution step one turn in, waiting on the model"
    )
    os.killpg(world.process.pid, signal.SIGKILL)  # the app and its Claude Code, as a crash does
    await world.stop_app()

    recovery_s = await restart_until_pull_request(world, thread_ts, timeout=60)
    assert any("interrupted" in t for t in thread_texts(world, thread_ts))
    runs = sqlite3.connect(world.root / "fixbot.db").execute(
        "select outcome, session_id from agent_runs where step = 'execution' order by id"
    )
    (first, first_session), (second, second_session) = runs.fetchall()
    assert (first, second) == ("interrupted", "success")
    assert first_session == second_session == doomed.session_id
    assert len(world.github.pulls("acme/shop")) == 1
    assert not world.github.pulls("acme/shop")[0].draft
    print(f"recovered after kill -9 in {recovery_s:.1f} s")


async def test_an_overloaded_model_is_retried_with_backoff(world: World) -> None:
    world.env["CLAUDE_CODE_MAX_RETRIES"] = "1"  # Claude Code gives up fast; Fixbot backs off
    seed_sentry_issue(world)
    world.model.script([overloaded(times=None)], match="Plan a fix for SHOP-1")
    script_planning(world)
    await world.start_app()
    started = time.monotonic()
    thread_ts, plan = await start_plan(world)
    waited = time.monotonic() - started
    texts = thread_texts(world, thread_ts)
    assert any("passing reason" in t and "attempt 2" in t for t in texts), texts
    assert buttons(plan)[:2] == ["Approve", "Reject"]
    backoff = world.config["limits"]["retry_backoff_s"]
    assert waited >= backoff / 2  # the first retry waits half to all of it (jitter)
    print(f"plan after one 529 failure and backoff: {waited:.1f} s")


async def test_a_permanent_model_error_fails_at_once_in_plain_words(world: World) -> None:
    seed_sentry_issue(world)
    refusal = Failure(400, "invalid_request_error", "prompt is too long", None, None)
    rejected = world.model.script([refusal], match="Plan a fix for SHOP-1")
    await world.start_app()
    await world.slack.slash_command("SHOP-1")
    parent = (await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1]))[0]
    failure = await failure_report(world, parent["ts"], timeout=60)
    assert "Claude Code could not run this step" in failure["text"]
    assert rejected.served == 1  # not retried: it would fail the same way
    assert not any("attempt 2" in t for t in thread_texts(world, parent["ts"]))

"""Scale-out end to end: Fixbot replicas on one PostgreSQL, each with its own Socket Mode
connection to the local Slack. Any replica serves any button, every step runs exactly
once, and a replica that dies holding a job loses it to another once its lease expires.

The same runs at 20 and 50 tasks, on both engines, are benchmarks/throughput.py's (`make
bench`), with these helpers and the same assertions.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fakes.anthropic import pause, structured, text, tool
from sqlalchemy import select
from test_core_loop import buttons, thread_texts
from world import CHANNEL, FIXED_PRICING, NEW_TEST, World, plan_data

from repos.workspace import branch_name
from storage.db import create_engine
from storage.tables import AgentRun

TASKS = 3  # enough for both replicas to serve; the load itself is benchmarks/throughput.py's
CONCURRENCY = {"planning": 2, "execution": 2}  # per replica
# A bound for a stuck run, not a figure: a loaded machine takes a few seconds a task.
BOUND_S_PER_TASK = 120.0


def title_of(ref: str) -> str:
    return f"AssertionError: discount made the price negative in {ref}"


def seed_issue(world: World, ref: str) -> None:
    world.sentry.add_issue(
        short_id=ref,
        project="shop-backend",
        title=title_of(ref),
        culprit="shop.pricing in apply_discount",
        exception=("AssertionError", "price -1800.0 is negative"),
        frames=[
            {
                "filename": "shop/pricing.py",
                "abs_path": "/app/shop/pricing.py",
                "function": "apply_discount",
                "lineno": 3,
                "in_app": True,
                "context_line": "    return price - price * percent",
            }
        ],
    )


def worktree_of(world: World, ref: str) -> Path:
    return world.worktree(branch_name(ref, title_of(ref)))


# The words after the ref keep SHOP-1's scripts from matching SHOP-10's prompts.
def planning_match(ref: str) -> str:
    return f"Plan a fix for {ref} in the repository"


def execution_match(ref: str) -> str:
    return f"Implement the approved plan for {ref}."


def script_planning(world: World, ref: str) -> None:
    worktree = worktree_of(world, ref)
    world.model.script(
        [
            [tool("Read", {"file_path": str(worktree / "shop" / "pricing.py")})],
            [tool("Write", {"file_path": str(worktree / "PLAN.md"), "content": "# Plan\n"})],
            [structured(plan_data())],
        ],
        match=planning_match(ref),
    )


def execution_turns(world: World, ref: str) -> list[Any]:
    """Every branch gets the same small fix and its test; Fixbot's verification runs them."""
    worktree = worktree_of(world, ref)
    return [
        [
            tool(
                "Write",
                {"file_path": str(worktree / "tests/test_discount.py"), "content": NEW_TEST},
            )
        ],
        [tool("Write", {"file_path": str(worktree / "shop/pricing.py"), "content": FIXED_PRICING})],
        [text(f"Fixed {ref}: percent is now divided by 100.")],
    ]


def script_execution(world: World, ref: str) -> None:
    world.model.script(execution_turns(world, ref), match=execution_match(ref))


async def start_replicas(world: World, count: int) -> None:
    """Start `count` replicas at once, as `docker compose up --scale fixbot=N` does."""
    for replica in range(count):
        await world.start_app(replica=replica, wait=False)
    await world.slack.wait_connected(n=count, timeout=60)


def diagnosis(world: World) -> str:
    logs = "\n".join(f"--- replica {r}:\n{world.app_log(r)[-4000:]}" for r in world.log_paths)
    return f"{logs}\nunexpected model requests: {world.model.unexpected}"


@dataclass
class Progress:
    """When each thread got its plan and its pull request, in seconds from the first /fix."""

    plan_s: dict[str, float] = field(default_factory=dict)
    pull_request_s: dict[str, float] = field(default_factory=dict)


async def fix_and_approve_all(world: World, refs: list[str]) -> Progress:
    """Type /fix for every ref and approve each plan as it comes, until every pull request."""
    started = time.monotonic()
    for ref in refs:
        await world.slack.slash_command(ref)
    progress = Progress()
    while len(progress.pull_request_s) < len(refs):
        elapsed = time.monotonic() - started
        for parent in world.slack.messages(CHANNEL):
            thread_ts = parent["ts"]
            for reply in world.slack.thread(CHANNEL, thread_ts)[1:]:
                assert "Retry" not in buttons(reply), f"{reply['text']}\n{diagnosis(world)}"
                if buttons(reply)[:1] == ["Approve"] and thread_ts not in progress.plan_s:
                    progress.plan_s[thread_ts] = elapsed
                    await world.slack.click_button(CHANNEL, reply["ts"], "approve", user="UBOB01")
                if "Pull request ready" in reply["text"]:
                    progress.pull_request_s.setdefault(thread_ts, elapsed)
        done = len(progress.pull_request_s)
        assert elapsed < BOUND_S_PER_TASK * len(refs), f"{done}/{len(refs)} pull requests"
        await asyncio.sleep(0.2)
    return progress


async def agent_runs(world: World) -> list[tuple[int, str, str]]:
    """(task id, step, outcome) of every agent run Fixbot recorded."""
    engine = create_engine(world.env["DATABASE_URL"])
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(AgentRun.task_id, AgentRun.step, AgentRun.outcome)
            )
            return [(task_id, step, outcome) for task_id, step, outcome in rows]
    finally:
        await engine.dispose()


@pytest.fixture
def replicas_world(world: World, postgres_database: str) -> World:
    world.env["DATABASE_URL"] = postgres_database
    world.config["concurrency"] = dict(CONCURRENCY)
    return world


async def test_every_task_gets_exactly_one_pull_request(replicas_world: World) -> None:
    world = replicas_world
    refs = [f"SHOP-{number}" for number in range(1, TASKS + 1)]
    for ref in refs:
        seed_issue(world, ref)
        script_planning(world, ref)
        script_execution(world, ref)
    await start_replicas(world, 2)

    await fix_and_approve_all(world, refs)

    await assert_exactly_once(world, refs)


async def assert_exactly_once(world: World, refs: list[str]) -> dict[int, int]:
    """Every ref has one ready pull request, every step ran once and well, and no step was
    taken over from a live replica; returns the steps each replica started."""
    pulls = world.github.pulls("acme/shop")
    heads = Counter(pull.head for pull in pulls)
    assert len(pulls) == len(heads) == len(refs), f"duplicate pull requests: {heads}"
    assert set(heads) == {branch_name(ref, title_of(ref)) for ref in refs}
    assert not any(pull.draft for pull in pulls)
    runs = await agent_runs(world)
    assert Counter(step for _, step, _ in runs) == {"planning": len(refs), "execution": len(refs)}
    assert len({(task_id, step) for task_id, step, _ in runs}) == 2 * len(refs)
    assert {outcome for _, _, outcome in runs} == {"success"}
    assert world.model.unexpected == []
    assert all(script.exhausted for script in world.model.scripts)
    logs = {replica: world.app_log(replica) for replica in world.log_paths}
    steps = {replica: log.count("step started") for replica, log in logs.items()}
    assert sum(steps.values()) == 2 * len(refs)
    assert not any("lease lost" in log for log in logs.values()), diagnosis(world)
    assert not any("database is locked" in log for log in logs.values()), diagnosis(world)
    return steps


@pytest.mark.long
async def test_a_replica_killed_holding_a_job_loses_it_to_the_other(
    replicas_world: World,
) -> None:
    world = replicas_world
    world.config["limits"].update(job_lease_s=2, sweep_interval_s=0.5)
    ref = "SHOP-1"
    seed_issue(world, ref)
    script_planning(world, ref)
    # The survivor resumes the killed session when its transcript was mirrored in time (it
    # continues this script) or starts afresh (the next one): either way it can finish.
    doomed = world.model.script(
        [[pause(30), text("never answered")], *execution_turns(world, ref)],
        match=execution_match(ref),
    )
    script_execution(world, ref)
    await start_replicas(world, 2)

    await world.slack.slash_command(ref)
    parent = (await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1]))[0]
    thread_ts = parent["ts"]
    plan = await world.slack.wait_for(
        lambda: next((m for m in world.slack.thread(CHANNEL, thread_ts) if buttons(m)), None),
        timeout=60,
        what="the plan",
    )
    await world.slack.click_button(CHANNEL, plan["ts"], "approve", user="UBOB01")
    await world.slack.wait_for(lambda: doomed.served, what="the execution step asking the model")
    [holder] = await world.slack.wait_for(
        lambda: [r for r in (0, 1) if "execution step started" in world.app_log(r)],
        what="the replica running the execution step",
    )
    survivor = 1 - holder
    os.killpg(world.processes[holder].pid, signal.SIGKILL)  # the replica and its Claude Code
    await world.stop_app(replica=holder)
    killed = time.monotonic()

    await world.slack.wait_for(
        lambda: any("Pull request ready" in t for t in thread_texts(world, thread_ts)),
        timeout=60,
        what="the pull request from the surviving replica",
    )
    print(
        f"\nreplica {survivor} took the job over and finished in {time.monotonic() - killed:.1f} s"
    )
    texts = thread_texts(world, thread_ts)
    assert any("interrupted" in t and "running it again" in t for t in texts), texts
    assert "execution step started" in world.app_log(survivor)
    pulls = world.github.pulls("acme/shop")
    assert len(pulls) == 1 and not pulls[0].draft
    assert world.model.unexpected == []
    runs = await agent_runs(world)
    assert Counter(step for _, step, outcome in runs if outcome == "success") == {
        "planning": 1,
        "execution": 1,
    }

"""The core loop end to end: /fix → plan in a thread → Approve → verified fix → pull request."""

from __future__ import annotations

import sqlite3
from typing import Any

from fakes.anthropic import structured, text, tool
from world import (
    CHANNEL,
    FIXED_PRICING,
    NEW_TEST,
    World,
    plan_data,
    seed_sentry_issue,
)

from agents.workspace import branch_name

TITLE = "AssertionError: discount made the price negative"


def buttons(message: dict[str, Any]) -> list[str]:
    return [
        element["text"]["text"]
        for block in message.get("blocks", [])
        if block["type"] == "actions"
        for element in block["elements"]
    ]


def script_planning(world: World, ref: str = "SHOP-1") -> None:
    worktree = world.worktree(branch_name(ref, TITLE))
    world.model.script(
        [
            [tool("Read", {"file_path": str(worktree / "shop" / "pricing.py")})],
            [tool("Write", {"file_path": str(worktree / "PLAN.md"), "content": "# Plan\n"})],
            [structured(plan_data())],
        ],
        match=f"Plan a fix for {ref}",
    )


def script_execution(world: World, ref: str = "SHOP-1", fix: str = FIXED_PRICING) -> None:
    worktree = world.worktree(branch_name(ref, TITLE))
    test_command = world.config["repos"][0]["test_command"]
    world.model.script(
        [
            [tool("Write", {"file_path": str(worktree / "tests/test_discount.py"), "content": NEW_TEST})],
            [tool("Bash", {"command": test_command})],
            [tool("Write", {"file_path": str(worktree / "shop/pricing.py"), "content": fix})],
            [tool("Bash", {"command": test_command})],
            [text("Fixed: percent is now divided by 100; the new test passes.")],
        ],
        match=f"Implement the approved plan for {ref}",
    )


async def test_fix_reaches_a_thread(world: World) -> None:
    seed_sentry_issue(world)
    script_planning(world)
    await world.start_app()
    ack = await world.slack.slash_command("SHOP-1")
    assert ack.latency_s < 3
    parent = await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1])
    thread_ts = parent[0]["ts"]
    await world.slack.wait_for(lambda: len(world.slack.thread(CHANNEL, thread_ts)) > 1)


async def test_happy_path_opens_a_verified_pull_request(world: World) -> None:
    seed_sentry_issue(world)
    script_planning(world)
    script_execution(world)
    await world.start_app()

    await world.slack.slash_command("SHOP-1")
    parent = (await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1]))[0]
    thread = lambda: world.slack.thread(CHANNEL, parent["ts"])  # noqa: E731

    plan = await world.slack.wait_for(
        lambda: next((m for m in thread() if buttons(m)), None), timeout=60, what="the plan"
    )
    assert buttons(plan)[:2] == ["Approve", "Reject"]
    drafts = world.github.pulls("acme/shop")
    assert len(drafts) == 1 and drafts[0].draft

    await world.slack.click_button(CHANNEL, plan["ts"], "approve", user="U_BOB")
    done = await world.slack.wait_for(
        lambda: next((m for m in thread()[1:] if "Pull request ready" in m["text"]), None),
        timeout=90,
        what="the pull request reply",
    )
    pulls = world.github.pulls("acme/shop")
    assert len(pulls) == 1
    pull = pulls[0]
    assert not pull.draft
    assert pull.html_url in done["text"]
    assert "failed" in pull.body.lower() and "passed" in pull.body.lower()
    assert pull.head == branch_name("SHOP-1", TITLE)
    db = sqlite3.connect(world.root / "fixbot.db")
    runs = db.execute("select step, session_id, cost_usd from agent_runs").fetchall()
    assert [run[0] for run in runs] == ["planning", "execution"]
    assert all(run[1] and run[2] > 0 for run in runs)
    assert world.model.unexpected == []

"""The core loop end to end: /fix → plan in a thread → Approve → verified fix → pull request,
for a Sentry issue and a Jira issue. The helpers
script that loop for the other end-to-end tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from fakes.anthropic import Script, Turn, structured, text, tool
from world import (
    CHANNEL,
    FIXED_PRICING,
    NEW_TEST,
    World,
    git,
    plan_data,
    seed_sentry_issue,
)

from repos.workspace import branch_name

TITLE = "AssertionError: discount made the price negative"


def buttons(message: dict[str, Any]) -> list[str]:
    return [
        element["text"]["text"]
        for block in message.get("blocks", [])
        if block["type"] == "actions"
        for element in block["elements"]
    ]


async def failure_report(world: World, thread_ts: str, timeout: float) -> dict[str, Any]:
    """The first message of the thread that offers Retry: how a failed step reports."""
    message: dict[str, Any] = await world.slack.wait_for(
        lambda: next(
            (m for m in world.slack.thread(CHANNEL, thread_ts) if "Retry" in buttons(m)), None
        ),
        timeout=timeout,
        what="the failure report",
    )
    return message


def script_planning(world: World, ref: str = "SHOP-1", **plan: Any) -> None:
    worktree = world.worktree(branch_name(ref, TITLE))
    world.model.script(
        [
            [tool("Read", {"file_path": str(worktree / "shop" / "pricing.py")})],
            [tool("Write", {"file_path": str(worktree / "PLAN.md"), "content": "# Plan\n"})],
            [structured(plan_data(**plan))],
        ],
        match=f"Plan a fix for {ref}",
    )


def writes_of_the_fix(worktree: Path) -> list[Turn]:
    """Two turns of an execution step: write the new test, then the fixed code."""
    test, fix = worktree / "tests/test_discount.py", worktree / "shop/pricing.py"
    return [
        [tool("Write", {"file_path": str(test), "content": NEW_TEST})],
        [tool("Write", {"file_path": str(fix), "content": FIXED_PRICING})],
    ]


def script_execution(world: World, ref: str = "SHOP-1", fix: str = FIXED_PRICING) -> Script:
    worktree = world.worktree(branch_name(ref, TITLE))
    test_command = world.config["repos"][0]["test_command"]
    return world.model.script(
        [
            [
                tool(
                    "Write",
                    {"file_path": str(worktree / "tests/test_discount.py"), "content": NEW_TEST},
                )
            ],
            [tool("Bash", {"command": test_command})],
            [tool("Write", {"file_path": str(worktree / "shop/pricing.py"), "content": fix})],
            [tool("Bash", {"command": test_command})],
            [text("Fixed: percent is now divided by 100; the new test passes.")],
        ],
        match=f"Implement the approved plan for {ref}",
    )


async def test_happy_path_opens_a_verified_pull_request(world: World) -> None:
    seed_sentry_issue(world)
    # The plan quotes Fixbot's own GitHub token: it must not reach the pull request.
    leaked = world.env["GITHUB_TOKEN"]
    script_planning(world, risk=f"Low: one expression. CI printed {leaked} once.")
    script_execution(world)
    await world.start_app()

    ack = await world.slack.slash_command("SHOP-1")
    assert ack.latency_s < 3
    parent = (await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1]))[0]
    thread = lambda: world.slack.thread(CHANNEL, parent["ts"])  # noqa: E731

    plan = await world.slack.wait_for(
        lambda: next((m for m in thread() if buttons(m)), None), timeout=60, what="the plan"
    )
    # /fix made one top-level parent that names the task; everything after it (status,
    # plan) is a reply in its thread.
    assert [m["ts"] for m in world.slack.messages(CHANNEL)] == [parent["ts"]]
    assert "SHOP-1" in str(parent["blocks"]) and TITLE in parent["text"]
    replies = thread()[1:]
    assert plan in replies and buttons(plan)[:2] == ["Approve", "Reject"]
    assert any("Planning" in m["text"] for m in replies)  # the step's status line
    assert all(m["thread_ts"] == parent["ts"] for m in replies)
    db = sqlite3.connect(world.root / "fixbot.db")
    assert db.execute("select channel_id, thread_ts from tasks").fetchall() == [
        (CHANNEL, parent["ts"])
    ]
    drafts = world.github.pulls("acme/shop")
    assert len(drafts) == 1 and drafts[0].draft
    assert leaked not in drafts[0].body and "[redacted]" in drafts[0].body

    await world.slack.click_button(CHANNEL, plan["ts"], "approve", user="UBOB01")
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
    assert leaked not in pull.body and "CI printed [redacted] once." in pull.body
    assert pull.head == branch_name("SHOP-1", TITLE)
    runs = db.execute("select step, session_id, cost_usd from agent_runs").fetchall()
    assert [run[0] for run in runs] == ["planning", "execution"]
    assert all(run[1] and run[2] > 0 for run in runs)
    # The task's spend is every step's, the budget's measure for the next step.
    (spent,) = db.execute("select cost_usd from tasks").fetchone()
    assert spent == pytest.approx(sum(run[2] for run in runs))
    assert world.model.unexpected == []
    # The agent's two test runs and Fixbot's own red, green and suite runs all tried to
    # write beside the checkout; the sandbox let none of them (tests/test_sandbox.py).
    assert list((world.workdir / "tasks").glob("env-*.txt")) == []


async def start_plan(world: World, ref: str = "SHOP-1") -> tuple[str, dict[str, Any]]:
    """Type /fix and wait for the plan; returns the thread ts and the plan message."""
    await world.slack.slash_command(ref)
    parent = (await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1]))[0]
    plan = await world.slack.wait_for(
        lambda: next((m for m in world.slack.thread(CHANNEL, parent["ts"]) if buttons(m)), None),
        timeout=60,
        what="the plan",
    )
    return parent["ts"], plan


def thread_texts(world: World, thread_ts: str) -> list[str]:
    return [message["text"] for message in world.slack.thread(CHANNEL, thread_ts)]


def git_heads(world: World) -> dict[str, str]:
    refs = git(
        "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads", cwd=world.origin
    )
    return dict(line.split() for line in refs.splitlines())


async def test_a_jira_issue_gets_the_plan_and_the_pull_request(world: World) -> None:
    world.env.update(
        JIRA_URL=world.jira.url, JIRA_EMAIL="fixbot@example.com", JIRA_API_TOKEN="jira-token"
    )
    world.config["jira_transition"] = "Done"
    world.jira.add_issue("SHOP-42", "Discounts over 1% make prices negative", labels=["bug"])
    title = "Discounts over 1% make prices negative"
    worktree = world.worktree(branch_name("SHOP-42", title))
    world.model.script(
        [
            [tool("Write", {"file_path": str(worktree / "PLAN.md"), "content": "# Plan\n"})],
            [structured(plan_data())],
        ],
        match="Plan a fix for SHOP-42",
    )
    test_command = world.config["repos"][0]["test_command"]
    world.model.script(
        [
            *writes_of_the_fix(worktree),
            [tool("Bash", {"command": test_command})],
            [text("Done.")],
        ],
        match="Implement the approved plan for SHOP-42",
    )
    await world.start_app()
    thread_ts, plan = await start_plan(world, "SHOP-42")
    await world.slack.wait_for(lambda: len(world.jira.issue("SHOP-42").comments) == 1)
    await world.slack.click_button(CHANNEL, plan["ts"], "approve", user="UBOB01")
    await world.slack.wait_for(
        lambda: any("Pull request ready" in t for t in thread_texts(world, thread_ts)), timeout=90
    )
    issue = world.jira.issue("SHOP-42")
    assert len(issue.comments) == 2 and "pull request" in str(issue.comments[-1]).lower()
    assert issue.status == "Done"

"""App Home: the dashboard's blocks for a busy database, and the real app publishing it and
taking a click on it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from test_core_loop import buttons, git_heads, script_planning, start_plan
from world import CHANNEL, World, seed_sentry_issue

from bot import views
from bot.dashboard import Dashboard, QueuedJob, TaskSummary, WeekStats
from bot.models import State

NOW = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)


def summary(task_id: int, state: str = State.DONE, **changes: Any) -> TaskSummary:
    values: dict[str, Any] = {
        "id": task_id,
        "ref_kind": "sentry",
        "ref_key": f"SHOP-{task_id}",
        "ref_url": None,
        "title": f"<!channel> broke <http://evil|click> {task_id}",
        "repo": "acme/shop",
        "state": state,
        "failure": None,
        "channel_id": "C_GENERAL",
        "thread_ts": f"1700000000.{task_id:06d}",
        "requested_by": "U_ALICE" if task_id % 2 else "U_BOB",
        "cost_usd": 0.25,
        "plan_version": 1,
        "pr_url": f"https://github.com/acme/shop/pull/{task_id}",
        "created_at": NOW - timedelta(hours=1),
        "since": NOW - timedelta(minutes=2, seconds=5),
    }
    values.update(changes)
    return TaskSummary(**values)


def busy_dashboard(page: int = 0) -> Dashboard:
    """300 tasks: 30 running, 100 queued, 40 awaiting approval."""
    return Dashboard(
        now=NOW,
        daily_budget_usd=100.0,
        task_budget_usd=5.0,
        running=[summary(i, State.PLANNING) for i in range(1, 11)],
        running_total=30,
        queue=[QueuedJob(summary(i, State.QUEUED), "planning", NOW) for i in range(31, 41)],
        queue_total=100,
        awaiting=[summary(i, State.AWAITING_APPROVAL) for i in range(131, 141)],
        awaiting_total=40,
        recent=[summary(300 - i - page * 15) for i in range(15)],
        mine=[summary(i) for i in range(1, 20, 2)][:10],
        stats=WeekStats(
            finished=10,
            succeeded=7,
            median_to_plan_s=95,
            median_to_pull_request_s=600,
            spend_today_usd=12.5,
            spend_week_usd=80,
        ),
        page=page,
        pages=20,
    )


def actions(view: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for b in view["blocks"] if b["type"] == "actions" for e in b["elements"]]


def text_of(view: dict[str, Any]) -> str:
    parts = []
    for block in view["blocks"]:
        if "text" in block:
            parts.append(block["text"]["text"])
        parts += [e.get("text", "") for e in block.get("elements", []) if e["type"] == "mrkdwn"]
    return "\n".join(parts)


def test_a_busy_home_stays_within_slack_limits_and_pages() -> None:
    view = views.home_view(busy_dashboard(page=3), "U_ALICE", is_approver=True)
    assert view["type"] == "home"
    assert len(view["blocks"]) <= views.MAX_HOME_BLOCKS
    assert all(len(b.get("text", {}).get("text", "")) <= 3000 for b in view["blocks"])
    pages = [
        (e["text"]["text"], e["value"]) for e in actions(view) if e["action_id"] == "home_page"
    ]
    assert pages == [("Newer", "2"), ("Older", "4")]
    text = text_of(view)
    assert "page 4 of 20" in text
    assert "…and 90 more" in text  # the queue beyond the first ten
    assert "…and 30 more waiting" in text
    assert "2:05" in text and "$0.25" in text  # a running step's elapsed time and spend
    assert "70% succeeded" in text and "1:35" in text and "10:00" in text
    assert "$12.50 of $100.00" in text and "$80.00 of $700.00" in text


def test_approvers_get_approve_and_reject_for_each_waiting_plan() -> None:
    view = views.home_view(busy_dashboard(), "U_ALICE", is_approver=True)
    decisions = [e for e in actions(view) if e["action_id"] in ("approve", "reject")]
    assert len(decisions) == 20
    assert {e["value"] for e in decisions} == {f"{i}:1" for i in range(131, 141)}

    others = views.home_view(busy_dashboard(), "U_CAROL", is_approver=False)
    assert not [e for e in actions(others) if e["action_id"] in ("approve", "reject")]
    assert "SHOP-131" in text_of(others)  # still listed, without the buttons


def test_titles_are_escaped_and_threads_linked() -> None:
    text = text_of(views.home_view(busy_dashboard(), "U_ALICE", is_approver=True))
    assert "<!channel>" not in text and "<http://evil" not in text
    assert "&lt;!channel&gt; broke" in text
    assert "<https://slack.com/archives/C_GENERAL/p1700000000000300|SHOP-300>" in text


def test_an_empty_home_says_how_to_start() -> None:
    empty = Dashboard(now=NOW, daily_budget_usd=100.0, task_budget_usd=5.0)
    view = views.home_view(empty, "U_ALICE", is_approver=True)
    text = text_of(view)
    assert "Nothing is running." in text and "/fix SHOP-1A" in text
    assert not actions(view)


async def test_home_shows_the_plan_awaiting_approval(world: World) -> None:
    """An approver's Home lists the plan with Approve and Reject; Reject clicked there ends
    the task as in the thread. A click in the thread by someone else is refused in private."""
    world.config["approvers"] = ["UBOB01"]
    seed_sentry_issue(world)
    script_planning(world)
    await world.start_app()
    thread_ts, plan = await start_plan(world)
    heads_before = git_heads(world)

    def plan_message() -> dict[str, Any]:
        return next(m for m in world.slack.thread(CHANNEL, thread_ts) if m["ts"] == plan["ts"])

    await world.slack.click_button(CHANNEL, plan["ts"], "approve", user="UMAL01")
    refusal = await world.slack.wait_for(lambda: world.slack.ephemerals("UMAL01"))
    assert "approvers" in refusal[-1]["text"]
    assert buttons(plan_message())  # the plan still waits (the Reject below expects it to)

    await world.slack.open_app_home("UBOB01")

    def waiting_plan() -> dict[str, Any] | None:
        view = world.slack.home_view("UBOB01")
        if view is None or "Plans awaiting approval* (1)" not in text_of(view):
            return None
        return view

    view = await world.slack.wait_for(waiting_plan, timeout=30, what="the Home view")
    values = {e["action_id"]: e["value"] for e in actions(view)}
    # The same action ids and value as the plan in the thread, so the same handlers decide.
    assert values["approve"] == values["reject"] == "1:1"
    assert "SHOP-1" in text_of(view) and "70%" not in text_of(view)

    # A Home click names no message: Fixbot finds the plan's message in the thread itself.
    await world.slack.click_home_button("reject", user="UBOB01", value="1:1")
    await world.slack.wait_for(
        lambda: (
            "Rejected" in world.slack.thread(CHANNEL, thread_ts)[0]["text"]
            and not buttons(plan_message())
        ),
        what="the rejection in the thread",
    )
    assert "Rejected by <@UBOB01>" in str(plan_message()["blocks"])
    assert git_heads(world) == heads_before  # nothing more was pushed


async def test_home_follows_task_changes_for_those_who_opened_it(world: World) -> None:
    seed_sentry_issue(world)
    await world.start_app()
    await world.slack.open_app_home("UBOB01")
    await world.slack.wait_for(lambda: world.slack.home_view("UBOB01"), what="the first view")
    await world.slack.slash_command("SHOP-1")
    await world.slack.wait_for(
        lambda: "SHOP-1" in text_of(world.slack.home_view("UBOB01") or {"blocks": []}),
        timeout=60,
        what="the republished Home",
    )


async def test_fix_help_and_status_answer_privately_and_start_nothing(world: World) -> None:
    await world.start_app()
    await world.slack.slash_command("help", user="U_ALICE")
    await world.slack.slash_command("status", user="U_ALICE")
    answers = await world.slack.wait_for(
        lambda: (lambda e: e if len(e) == 2 else None)(world.slack.ephemerals("U_ALICE")),
        what="two ephemeral answers",
    )
    help_text, status_text = sorted((e["text"] for e in answers), key=lambda t: "Running" in t)
    assert "Accepted forms" in help_text and "Approve" in help_text
    assert "Running: 0 · queued: 0 · awaiting approval: 0" in status_text
    assert "of the $100.00 daily budget" in status_text
    assert world.slack.messages(CHANNEL) == []

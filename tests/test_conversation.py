"""Fixbot in conversation, end to end: alerts in a channel, replies, mentions, questions."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from fakes.anthropic import structured, tool
from world import CHANNEL, World, git, plan_data, seed_sentry_issue

from repos.workspace import branch_name

PAYLOADS = Path(__file__).parent / "payloads"
TITLE = "AssertionError: discount made the price negative"
ASK = "mcp__fixbot__ask_in_thread"


def sentry_alert(world: World, issue_id: str, short_id: str = "SHOP-1") -> dict[str, Any]:
    raw = (PAYLOADS / "sentry_slack_blocks.json").read_text()
    values = {"SENTRY": world.sentry.url, "ISSUE_ID": issue_id, "SHORT_ID": short_id}
    for key, value in values.items():
        raw = raw.replace("{{" + key + "}}", value)
    return json.loads(raw)


async def post_alert(world: World, alert: dict[str, Any]) -> str:
    return await world.slack.post_message(
        CHANNEL, alert["text"], bot_id=alert["bot_id"], blocks=alert["blocks"]
    )


def buttons(message: dict[str, Any]) -> list[str]:
    """The buttons of one of Fixbot's messages (Sentry's alerts have their own)."""
    if message.get("bot_id") != "BFIXBOT":
        return []
    return [
        element["text"]["text"]
        for block in message.get("blocks", [])
        if block["type"] == "actions"
        for element in block["elements"]
    ]


def plan_script(world: World, *extra: Any, ref: str = "SHOP-1", first: Any = None) -> None:
    worktree = world.worktree(branch_name(ref, TITLE))
    turns = [
        [tool("Read", {"file_path": str(worktree / "shop" / "pricing.py")})],
        *([first] if first is not None else []),
        [structured(plan_data())],
        *extra,
    ]
    world.model.script(turns, match=f"Plan a fix for {ref}")


async def wait_for_question(world: World, thread_ts: str) -> None:
    """Until the planning agent's question is in the thread."""
    await world.slack.wait_for(
        lambda: "The agent asks" in thread_texts(world, thread_ts), what="the question", timeout=60
    )


async def wait_for_plan(world: World, thread_ts: str, version: int = 1) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next(
            (
                m
                for m in world.slack.thread(CHANNEL, thread_ts)
                if buttons(m) and f"Plan v{version}" in json.dumps(m.get("blocks"))
            ),
            None,
        )

    return await world.slack.wait_for(find, timeout=60, what=f"plan v{version}")


def thread_texts(world: World, thread_ts: str) -> str:
    return "\n".join(m.get("text", "") for m in world.slack.thread(CHANNEL, thread_ts))


def db(world: World) -> sqlite3.Connection:
    return sqlite3.connect(world.root / "fixbot.db")


async def start_fix(world: World) -> str:
    await world.slack.slash_command("SHOP-1")
    parent = await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1])
    return str(parent[0]["ts"])


# Alerts


async def test_a_sentry_alert_offers_a_fix_and_the_button_plans_it(world: World) -> None:
    issue_id = seed_sentry_issue(world)
    plan_script(world)
    await world.start_app()

    alert_ts = await post_alert(world, sentry_alert(world, issue_id))
    offer = await world.slack.wait_for(
        lambda: next((m for m in world.slack.thread(CHANNEL, alert_ts) if buttons(m)), None),
        timeout=60,
        what="the Plan a fix offer",
    )
    assert buttons(offer) == ["Plan a fix"]
    assert len(world.slack.messages(CHANNEL)) == 1  # everything else is in the alert's thread

    await world.slack.click_button(CHANNEL, offer["ts"], "plan_alert", user="U_BOB")
    plan = await wait_for_plan(world, alert_ts)
    assert buttons(plan)[:2] == ["Approve", "Reject"]
    await world.slack.wait_for(  # the offer's update may land after the plan on a busy machine
        lambda: "Planning started by <@U_BOB>" in json.dumps(world.slack.thread(CHANNEL, alert_ts)),
        what="the offer saying who started the planning",
    )

    assert db(world).execute("select count(*) from tasks").fetchone() == (1,)


async def test_an_alert_storm_is_one_task_with_a_count(world: World) -> None:
    issue_id = seed_sentry_issue(world)
    await world.start_app()
    alert = sentry_alert(world, issue_id)
    first = await post_alert(world, alert)
    await world.slack.wait_for(lambda: len(world.slack.thread(CHANNEL, first)) > 1)
    for _ in range(49):
        await post_alert(world, alert)

    await world.slack.wait_for(
        lambda: "Seen again (49)" in thread_texts(world, first), timeout=60, what="the count"
    )
    offers = [m for m in world.slack.thread(CHANNEL, first) if buttons(m)]
    assert len(offers) == 1
    assert db(world).execute("select count, sentry_issue from alerts").fetchall() == [
        (50, issue_id)
    ]
    # Sentry's other messages got no replies of their own.
    assert all(
        len(world.slack.thread(CHANNEL, m["ts"])) == 1
        for m in world.slack.messages(CHANNEL)
        if m["ts"] != first
    )


async def test_auto_plan_starts_at_once_and_other_bots_are_ignored(world: World) -> None:
    issue_id = seed_sentry_issue(world)
    plan_script(world)
    world.config["auto_plan"] = True
    await world.start_app()

    chatter = await world.slack.post_message(CHANNEL, "<!channel> deploy done", bot_id="B_CI")
    alert_ts = await post_alert(world, sentry_alert(world, issue_id))
    await wait_for_plan(world, alert_ts)
    assert len(world.slack.thread(CHANNEL, chatter)) == 1


async def test_a_regression_links_the_earlier_pull_request(world: World) -> None:
    issue_id = seed_sentry_issue(world)
    await world.start_app()
    alert = sentry_alert(world, issue_id)
    first = await post_alert(world, alert)
    await world.slack.wait_for(lambda: len(world.slack.thread(CHANNEL, first)) > 1)
    connection = db(world)
    with connection:
        connection.execute(
            "insert into tasks (state, ref_kind, ref_key, title, context, priority, channel_id,"
            " thread_ts, plan_version, cost_usd, created_at, updated_at, pr_url) values ('done',"
            " 'sentry', 'SHOP-1', 't', '', 1, ?, ?, 1, 0, '2024-01-01', '2024-01-01',"
            " 'https://github.com/acme/shop/pull/7')",
            (CHANNEL, first),
        )
        connection.execute("update alerts set task_id = (select max(id) from tasks)")

    again = await post_alert(world, alert)
    await world.slack.wait_for(
        lambda: "pull/7" in json.dumps(world.slack.thread(CHANNEL, again)),
        what="the regression note",
    )
    assert any(buttons(m) == ["Plan a fix"] for m in world.slack.thread(CHANNEL, again))


# Feedback


async def test_a_reply_revises_the_plan_and_supersedes_its_buttons(world: World) -> None:
    seed_sentry_issue(world)
    worktree = world.worktree(branch_name("SHOP-1", TITLE))
    revised = plan_data(summary="Divide by 100 and refuse percent above 100.")
    plan_script(
        world,
        [tool("Write", {"file_path": str(worktree / "PLAN.md"), "content": "# Plan v2\n"})],
        [structured(revised)],
    )
    await world.start_app()
    thread_ts = await start_fix(world)
    first = await wait_for_plan(world, thread_ts)

    await world.slack.reply_in_thread(
        CHANNEL, thread_ts, "Also refuse percent > 100 <!channel>", user="U_BOB"
    )
    second = await wait_for_plan(world, thread_ts, version=2)
    assert "refuse percent above 100" in json.dumps(second["blocks"])

    old = next(m for m in world.slack.thread(CHANNEL, thread_ts) if m["ts"] == first["ts"])
    assert buttons(old) == []
    assert "Superseded by a revised plan" in json.dumps(old["blocks"])
    echoed = json.dumps(
        [m for m in world.slack.thread(CHANNEL, thread_ts) if m.get("bot_id") == "BFIXBOT"]
    )
    assert "<!channel>" not in echoed and "&lt;!channel&gt;" in echoed

    resumed = [r for r in world.model.requests if "plan-changes skill" in json.dumps(r)]
    assert resumed, "the revision prompt names the plan-changes skill"
    sessions = (
        db(world)
        .execute("select session_id from agent_runs where step = 'planning' order by id")
        .fetchall()
    )
    assert len(sessions) == 2 and sessions[0] == sessions[1]  # the same session, resumed


async def test_an_unanswered_question_lets_the_agent_carry_on(world: World) -> None:
    seed_sentry_issue(world)
    plan_script(world, first=[tool(ASK, {"question": "Which currency?"})])
    world.config["question_timeout_s"] = 1
    await world.start_app()
    thread_ts = await start_fix(world)
    await wait_for_plan(world, thread_ts)
    assert "No answer in time" in thread_texts(world, thread_ts)
    assert any("No answer; proceed" in json.dumps(r) for r in world.model.tool_results())


# Mentions


async def test_mention_commands_in_a_task_thread(world: World) -> None:
    seed_sentry_issue(world)
    plan_script(world)
    world.config["approvers"] = ["U_BOB"]
    await world.start_app()
    thread_ts = await start_fix(world)
    plan = await wait_for_plan(world, thread_ts)

    await world.slack.mention(CHANNEL, "help", thread_ts=thread_ts)
    await world.slack.wait_for(
        lambda: any("approve" in e["text"] for e in world.slack.ephemerals("U_ALICE"))
    )
    await world.slack.mention(CHANNEL, "status", thread_ts=thread_ts)
    await world.slack.wait_for(
        lambda: "waiting for approval" in thread_texts(world, thread_ts), what="status"
    )
    await world.slack.mention(CHANNEL, "approve", thread_ts=thread_ts, user="U_ALICE")
    await world.slack.wait_for(
        lambda: any("Only the approvers" in e["text"] for e in world.slack.ephemerals("U_ALICE")),
        what="the refusal",
    )
    await world.slack.mention(CHANNEL, "reject", thread_ts=thread_ts, user="U_BOB")
    await world.slack.wait_for(
        lambda: "Rejected by <@U_BOB>" in json.dumps(world.slack.thread(CHANNEL, thread_ts)),
        what="the rejection",
    )
    decided = next(m for m in world.slack.thread(CHANNEL, thread_ts) if m["ts"] == plan["ts"])
    assert buttons(decided) == []
    await world.slack.mention(CHANNEL, "approve", thread_ts=thread_ts, user="U_BOB")
    await world.slack.wait_for(
        lambda: any("already rejected" in e["text"] for e in world.slack.ephemerals("U_BOB"))
    )


async def test_mention_fix_starts_a_task_from_the_thread_and_cancel_stops_it(world: World) -> None:
    await world.start_app()
    root = await world.slack.post_message(
        CHANNEL, "Checkout shows a negative total with a 150% coupon", user="U_CAROL"
    )
    await world.slack.reply_in_thread(CHANNEL, root, "happens since Monday", user="U_DAVE")
    await world.slack.mention(CHANNEL, "fix", thread_ts=root, user="U_CAROL")
    await world.slack.wait_for(
        lambda: "Queued" in thread_texts(world, root) or "Planning" in thread_texts(world, root),
        what="the task in the thread",
    )
    row = db(world).execute("select ref_kind, repo, context, title from tasks").fetchone()
    assert row[0] == "text" and row[1] == "acme/shop"
    await world.slack.mention(CHANNEL, "cancel", thread_ts=root, user="U_CAROL")
    await world.slack.wait_for(
        lambda: "Cancelled by <@U_CAROL>" in thread_texts(world, root), what="the cancel"
    )


async def test_mention_retry_runs_a_failed_step_again(world: World) -> None:
    # A repository that cannot be cloned yet: planning fails and offers Retry.
    gone = world.root / "gone.git"
    world.config["repos"].append({"name": "acme/gone", "clone_url": gone.as_uri()})
    world.model.script([[structured(plan_data())]], match="in the repository acme/gone")
    await world.start_app()
    await world.slack.slash_command("checkout is broken repo:acme/gone")
    parent = (await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1]))[0]
    await world.slack.wait_for(
        lambda: any("Retry" in buttons(m) for m in world.slack.thread(CHANNEL, parent["ts"])),
        what="the failure",
    )
    # The repository is there now: the step run again gets through to a plan.
    git("clone", "-q", "--bare", str(world.origin), str(gone), cwd=world.root)
    world.github.add_repo("acme/gone", gone)

    await world.slack.mention(CHANNEL, "retry", thread_ts=parent["ts"])

    await world.slack.wait_for(
        lambda: "Retry requested by <@U_ALICE>" in thread_texts(world, parent["ts"])
    )
    await wait_for_plan(world, parent["ts"])
    assert db(world).execute("select kind from jobs").fetchall() == [("planning",)] * 2
    assert world.model.unexpected == []

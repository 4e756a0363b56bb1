"""After the merge, end to end: Sentry resolved, Jira moved, the fix watched, regressions heard.

The watch window is an hour here and the checks come every second
(`limits.verify_check_interval_s`); a test that needs the window over moves its end in the
database, as the hour would. Tests wait on what the thread says, never on the clock.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fakes.anthropic import structured
from test_cli import fixbot
from test_conversation import (
    buttons,
    db,
    plan_script,
    post_alert,
    sentry_alert,
    start_fix,
    thread_texts,
    wait_for_plan,
)
from test_core_loop import script_execution, script_planning
from test_webhooks import SECRETS, payload, post, sign, start
from world import CHANNEL, World, plan_data, seed_sentry_issue

MERGE_COMMIT = "e5bd3914e2e596debea16f433f57875b5b90bcd6"  # github_pull_request_closed.json


async def start_watching(world: World, window_hours: float, check_every_s: float = 1) -> str:
    world.config["limits"]["verify_check_interval_s"] = check_every_s
    return await start(world, verify_window_hours=window_hours)


async def merge(world: World, hooks: str) -> None:
    """GitHub says the task's pull request was merged (in MERGE_COMMIT)."""
    number = str(world.github.pulls("acme/shop")[0].number)
    closed = payload("github_pull_request_closed.json", NUMBER=number)
    headers = {
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + sign(SECRETS["github"], closed),
    }
    assert await post(f"{hooks}/github", closed, headers) == (200, {"ok": True})


async def planned_and_done(world: World, ref: str = "SHOP-1") -> str:
    """A task whose plan is out, then marked done as a finished execution leaves it (its
    draft pull request stands for the fix); returns its thread."""
    await world.slack.slash_command(ref)
    parent = await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1])
    thread_ts = str(parent[0]["ts"])
    await wait_for_plan(world, thread_ts)
    with db(world) as connection:
        connection.execute("update tasks set state = 'done'")
    return thread_ts


def fixbot_says(world: World, thread_ts: str, words: str) -> dict[str, Any] | None:
    return next(
        (
            m
            for m in world.slack.thread(CHANNEL, thread_ts)
            if m.get("bot_id") == "BFIXBOT" and words in m.get("text", "")
        ),
        None,
    )


def thread(world: World, thread_ts: str) -> list[dict[str, Any]]:
    return world.slack.thread(CHANNEL, thread_ts)


def parent_text(world: World) -> str:
    return json.dumps(world.slack.messages(CHANNEL)[0]["blocks"])


def watch_row(world: World) -> tuple[Any, ...]:
    row = db(world).execute("select status, events_since, release from fix_watches").fetchone()
    return tuple(row) if row else ()


def pending_after_merge_jobs(world: World) -> int:
    """After-merge jobs still to run: queued, or running when the app stopped (its lease
    then runs out and the job is taken over)."""
    connection = sqlite3.connect(world.root / "fixbot.db")
    query = (
        "select count(*) from jobs where kind = 'after_merge' and status in ('queued', 'running')"
    )
    return int(connection.execute(query).fetchone()[0])


async def test_a_merged_fix_is_resolved_watched_through_a_restart_and_holds(
    world: World,
) -> None:
    issue_id = seed_sentry_issue(world)
    world.sentry.add_repository("acme/shop")
    script_planning(world)
    script_execution(world)
    hooks = await start_watching(world, window_hours=1)
    thread_ts, plan = await start_plan_in(world)
    await world.slack.click_button(CHANNEL, plan["ts"], "approve", user="UBOB01")
    await world.slack.wait_for(
        lambda: fixbot_says(world, thread_ts, "Pull request ready"), timeout=120
    )

    await merge(world, hooks)
    await world.slack.wait_for(
        lambda: fixbot_says(world, thread_ts, "After the merge"), timeout=60, what="the loop"
    )
    assert world.sentry.resolutions == [
        (
            issue_id,
            {
                "status": "resolved",
                "statusDetails": {"inCommit": {"commit": MERGE_COMMIT, "repository": "acme/shop"}},
            },
        )
    ]
    await world.slack.wait_for(
        lambda: "watching the error in Sentry" in parent_text(world), what="the parent"
    )

    # Fixbot stops and starts again while it watches: the scheduled check is a job row.
    # The hour passes while it is stopped (the window's end is a row too).
    assert await world.stop_app() == 0
    assert watch_row(world)[0] == "watching" and pending_after_merge_jobs(world) == 1
    with db(world) as connection:
        connection.execute("update fix_watches set window_ends_at = merged_at")
    await world.start_app()
    held = await world.slack.wait_for(
        lambda: fixbot_says(world, thread_ts, "No new events"), timeout=120, what="the verdict"
    )
    assert "No new events in 1 h since the merge: the fix held." in held["text"]
    assert watch_row(world) == ("held", 0, None)
    await world.slack.wait_for(lambda: "the fix held" in parent_text(world), what="the parent")
    assert len(world.slack.messages(CHANNEL)) == 1  # everything in the one thread

    await world.slack.open_app_home("U_ALICE")
    await world.slack.wait_for(
        lambda: "fix held" in json.dumps(world.slack.home_view("U_ALICE") or {}), what="App Home"
    )
    shown = (await fixbot(world, "tasks", "show", "1")).out
    assert "After the merge" in shown and "status:        held" in shown
    assert f"resolved:      in commit {MERGE_COMMIT[:12]}" in shown
    print("\n".join(thread_texts(world, thread_ts).splitlines()))
    print(shown)


async def test_events_after_the_release_mean_the_fix_did_not_hold_and_plan_again(
    world: World,
) -> None:
    issue_id = seed_sentry_issue(world)
    world.sentry.add_release("shop@1.0.0", commits=["0" * 40])  # before the fix
    plan_script(world)
    hooks = await start_watching(world, window_hours=1)
    thread_ts = await planned_and_done(world)
    pr_url = world.github.pulls("acme/shop")[0].html_url

    await merge(world, hooks)
    deployed = datetime.now(UTC)
    world.sentry.add_release("shop@1.0.1", commits=[MERGE_COMMIT], deployed_at=deployed)
    for seconds in (1, 2, 3):
        world.sentry.add_event(
            issue_id, at=deployed + timedelta(seconds=seconds), release="shop@1.0.1"
        )
    verdict = await world.slack.wait_for(
        lambda: fixbot_says(world, thread_ts, "Still seen"), timeout=60, what="the verdict"
    )
    # Sentry does not know the repository, so the issue is resolved in the next release.
    assert world.sentry.resolutions == [
        (issue_id, {"status": "resolved", "statusDetails": {"inNextRelease": True}})
    ]
    assert "Still seen: 3 events since release `shop@1.0.1`" in verdict["text"]
    assert "did not hold" in verdict["text"] and buttons(verdict) == ["Plan again"]
    assert watch_row(world) == ("not_held", 3, "shop@1.0.1")

    again = plan_data(summary="Round half-cents before comparing; the earlier fix missed it.")
    world.model.script([[structured(again)]], match="Plan a fix for SHOP-1")
    await world.slack.click_button(CHANNEL, verdict["ts"], "plan_again", user="U_CAROL")
    await world.slack.wait_for(
        lambda: next(
            (
                m
                for m in world.slack.thread(CHANNEL, thread_ts)
                if buttons(m)[:2] == ["Approve", "Reject"] and "half-cents" in json.dumps(m)
            ),
            None,
        ),
        timeout=90,
        what="the new plan in the same thread",
    )
    assert len(world.slack.messages(CHANNEL)) == 1
    # The main conversation's requests (the CLI's side requests, a title, carry no tools).
    prompts = [json.dumps(body) for body in world.model.requests if body.get("tools")]
    told = [prompt for prompt in prompts if "Fixbot fixed this before" in prompt]
    assert told, "the new plan's prompt names the earlier fix"
    assert pr_url in told[0] and MERGE_COMMIT in told[0] and "shop@1.0.1" in told[0]
    assert 'untrusted-data source=\\"error-report\\"' in told[0]
    old_verdict = await world.slack.wait_for(
        lambda: next(
            (
                m
                for m in thread(world, thread_ts)
                if m["ts"] == verdict["ts"] and "Planning again, asked by" in m["text"]
            ),
            None,
        ),
        what="the verdict without its button",
    )
    assert buttons(old_verdict) == []
    tasks = db(world).execute("select id, state, thread_ts from tasks order by id").fetchall()
    assert [(state, ts) for _, state, ts in tasks] == [
        ("done", thread_ts),
        ("awaiting_approval", thread_ts),
    ]
    assert world.model.unexpected == []


async def test_a_regressed_webhook_reopens_the_original_thread(world: World) -> None:
    issue_id = seed_sentry_issue(world)
    plan_script(world)
    hooks = await start_watching(world, window_hours=1, check_every_s=5)
    thread_ts = await planned_and_done(world)
    pr_url = world.github.pulls("acme/shop")[0].html_url
    await merge(world, hooks)
    await world.slack.wait_for(lambda: fixbot_says(world, thread_ts, "After the merge"))

    body = json.loads(
        payload(
            "sentry_issue_created.json",
            SENTRY=world.sentry.url,
            ISSUE_ID=issue_id,
            SHORT_ID="SHOP-1",
        )
    )
    body["action"] = "unresolved"
    body["data"]["issue"].update(status="unresolved", substatus="regressed")
    raw = json.dumps(body).encode()
    headers = {
        "Sentry-Hook-Resource": "issue",
        "Request-ID": str(uuid.uuid4()),
        "Sentry-Hook-Signature": sign(SECRETS["sentry"], raw),
    }
    assert await post(f"{hooks}/sentry", raw, headers) == (200, {"ok": True})
    reopened = await world.slack.wait_for(
        lambda: fixbot_says(world, thread_ts, "regressed"), what="the regression in its thread"
    )
    assert pr_url in reopened["text"] and buttons(reopened) == ["Plan again"]
    assert len(world.slack.messages(CHANNEL)) == 1  # no new thread, no new task
    assert db(world).execute("select count(*) from tasks").fetchone() == (1,)
    assert watch_row(world)[0] == "regressed"

    # Sentry's alert about it in the channel is counted in the original thread too.
    alert_ts = await post_alert(world, sentry_alert(world, issue_id))
    await world.slack.wait_for(
        lambda: fixbot_says(world, thread_ts, "Seen again (1)"), what="the count in the thread"
    )
    assert db(world).execute("select count(*) from tasks").fetchone() == (1,)
    assert len(thread(world, alert_ts)) == 1  # the alert itself, no reply of its own


async def test_a_channel_alert_for_a_merged_fix_reopens_the_original_thread(
    world: World,
) -> None:
    issue_id = seed_sentry_issue(world)
    plan_script(world)
    hooks = await start_watching(world, window_hours=1, check_every_s=5)
    thread_ts = await planned_and_done(world)
    await merge(world, hooks)
    await world.slack.wait_for(lambda: fixbot_says(world, thread_ts, "After the merge"))

    alert_ts = await post_alert(world, sentry_alert(world, issue_id))
    back = await world.slack.wait_for(
        lambda: fixbot_says(world, thread_ts, "came back"), what="the alert in its thread"
    )
    assert "A Sentry alert names `SHOP-1` again" in back["text"]
    assert buttons(back) == ["Plan again"]
    pointer = await world.slack.wait_for(
        lambda: next((m for m in thread(world, alert_ts) if m.get("bot_id") == "BFIXBOT"), None),
        what="the pointer to the original thread",
    )
    assert "Fixbot fixed this issue before" in pointer["text"] and buttons(pointer) == []
    assert db(world).execute("select count(*) from tasks").fetchone() == (1,)


async def test_a_merged_jira_task_moves_the_issue_to_done_with_a_comment(world: World) -> None:
    world.jira.add_issue("SHOP-42", "Discounts over 1% make prices negative", labels=["bug"])
    world.model.script([[structured(plan_data())]], match="Plan a fix for SHOP-42")
    hooks = await start(world, jira=True)
    thread_ts = await planned_and_done(world, "SHOP-42")
    pr_url = world.github.pulls("acme/shop")[0].html_url

    await merge(world, hooks)
    closed = await world.slack.wait_for(lambda: fixbot_says(world, thread_ts, "After the merge"))
    issue = world.jira.issue("SHOP-42")
    assert issue.status == "Done"
    assert pr_url in json.dumps(issue.comments[-1]) and MERGE_COMMIT[:12] in json.dumps(
        issue.comments[-1]
    )
    assert "moved to Done" in closed["text"]
    moves = [r for r in world.jira.requests if r.method == "POST" and "transitions" in r.path]
    assert len(moves) == 1
    assert watch_row(world) == ("closed", None, None)


# Helpers


async def start_plan_in(world: World) -> tuple[str, dict[str, Any]]:
    thread_ts = await start_fix(world)
    return thread_ts, await wait_for_plan(world, thread_ts)

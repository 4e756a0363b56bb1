"""After the merge: Sentry resolved, Jira moved, the fix watched, regressions heard.

End to end, each test starts from a task its steps would have left done (test_cli's
`seed_task`: test_core_loop proves the steps), merged by GitHub's webhook. The watch window
is an hour here and the checks come every second (`limits.verify_check_interval_s`); a test
that needs the window over moves its end in the database, as the hour would. Tests wait on
what the thread says, never on the clock. An issue coming back after its fix is heard
in-process, through the webhook routes over a `Machine` (test_webhooks's `webhooks`).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fakes.anthropic import structured
from sqlalchemy import select
from test_cli import fixbot
from test_conversation import TITLE, buttons, db, labels, slack_alert, thread_texts
from test_webhooks import (
    PULL,
    PULL_URL,
    Hooks,
    github_signed,
    payload,
    post,
    pull_url,
    seed_pull,
    sentry_signed,
    start,
    webhooks,
)
from world import CHANNEL, World, plan_data

from bot.models import State, Watch
from storage.jobs import JobKind, JobStatus
from storage.tables import FixWatch, Task

MERGE_COMMIT = "e5bd3914e2e596debea16f433f57875b5b90bcd6"  # github_pull_request_closed.json


async def start_watching(world: World, window_hours: float) -> str:
    world.config["limits"]["verify_check_interval_s"] = 1
    return await start(world, verify_window_hours=window_hours)


async def merge(world: World, hooks: str) -> None:
    """GitHub says the seeded task's pull request was merged (in MERGE_COMMIT)."""
    closed = payload("github_pull_request_closed.json", NUMBER=str(PULL))
    headers = github_signed("pull_request", closed)
    assert await post(f"{hooks}/github", closed, headers) == (200, {"ok": True})


def seen_before_the_fix(world: World) -> str:
    """SHOP-1 in Sentry, last seen two hours before its fix is merged, as a real task's
    steps leave it: its only events since the merge are then those a test adds (Sentry's
    `start` counts whole seconds)."""
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    return world.sentry.add_issue(short_id="SHOP-1", title=TITLE, last_seen=two_hours_ago)


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
    return json.dumps(world.slack.messages(CHANNEL)[0].get("blocks"))  # none until updated


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
    issue_id = seen_before_the_fix(world)
    world.sentry.add_repository("acme/shop")
    hooks = await start_watching(world, window_hours=1)
    thread_ts = await seed_pull(world, "done")

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
    issue_id = seen_before_the_fix(world)
    world.sentry.add_release("shop@1.0.0", commits=["0" * 40])  # before the fix
    hooks = await start_watching(world, window_hours=1)
    thread_ts = await seed_pull(world, "done")
    pr_url = pull_url(world)

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


async def test_a_merged_jira_task_moves_the_issue_to_done_with_a_comment(world: World) -> None:
    world.jira.add_issue("SHOP-42", "Discounts over 1% make prices negative", labels=["bug"])
    hooks = await start(world, jira=True)
    thread_ts = await seed_pull(world, "done", title="Discounts over 1% make prices negative")
    with db(world) as connection:  # test_cli's `seed_task` seeds a Sentry task
        connection.execute("update tasks set ref_kind = 'jira', ref_key = 'SHOP-42'")
    pr_url = pull_url(world)

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


# In-process: an issue coming back after its fix


SHOP_1 = "42"  # the Sentry issue id of SHOP-1
ALERT_TS = "1.000001"  # Sentry's alert message in the channel


async def merged_fix(hooks: Hooks) -> Task:
    """A done task for SHOP-1 whose pull request GitHub says was merged, the loop closed.
    With no Sentry here its watch ends closed rather than watching: either reopens."""
    task = await hooks.seeded(State.DONE, pr_number=PULL, pr_url=PULL_URL)
    closed = payload("github_pull_request_closed.json", NUMBER=str(PULL))
    merged = await hooks.post("github", closed, github_signed("pull_request", closed))
    assert merged == (200, {"ok": True})
    job = await hooks.machine.queue.claim([JobKind.AFTER_MERGE])
    assert job is not None
    assert (await hooks.machine.conversation.after_merge.run_job(job)).status == JobStatus.DONE
    assert hooks.said(task.thread_ts, "After the merge") is not None
    return task


async def watch_status(hooks: Hooks) -> str | None:
    async with hooks.machine.sessions() as session:
        return await session.scalar(select(FixWatch.status))


async def test_a_regressed_webhook_reopens_the_original_thread(tmp_path: Path) -> None:
    async with webhooks(tmp_path) as hooks:
        task = await merged_fix(hooks)
        values = {"SENTRY": "https://sentry.io", "ISSUE_ID": SHOP_1, "SHORT_ID": "SHOP-1"}
        body = json.loads(payload("sentry_issue_created.json", **values))
        body["action"] = "unresolved"
        body["data"]["issue"].update(status="unresolved", substatus="regressed")
        raw = json.dumps(body).encode()

        assert await hooks.post("sentry", raw, sentry_signed("issue", raw)) == (200, {"ok": True})
        reopened = hooks.said(task.thread_ts, "regressed")
        assert reopened is not None and PULL_URL in reopened.text
        assert labels(hooks.threads.blocks[reopened.ts]) == ["Plan again"]
        assert len(hooks.threads.parents()) == 1  # no new thread, no new task
        assert await hooks.count(Task) == 1
        assert await watch_status(hooks) == Watch.REGRESSED

        # Sentry's alert about it in the channel is counted in the original thread too.
        alert = hooks.machine.conversation.alert_in(slack_alert(ALERT_TS, SHOP_1))
        assert alert is not None
        await hooks.machine.conversation.on_alert(alert, channel=CHANNEL, message_ts=ALERT_TS)
        await hooks.threads.wait_for(task.thread_ts, "Seen again (1)")  # noted after ~1 s
        assert await hooks.count(Task) == 1
        assert hooks.threads.texts_of(ALERT_TS) == []  # the alert gets no reply of its own


async def test_a_channel_alert_for_a_merged_fix_reopens_the_original_thread(
    tmp_path: Path,
) -> None:
    async with webhooks(tmp_path) as hooks:
        task = await merged_fix(hooks)
        alert = hooks.machine.conversation.alert_in(slack_alert(ALERT_TS, SHOP_1))
        assert alert is not None

        await hooks.machine.conversation.on_alert(alert, channel=CHANNEL, message_ts=ALERT_TS)
        back = hooks.said(task.thread_ts, "came back")
        assert back is not None and "A Sentry alert names `SHOP-1` again" in back.text
        assert labels(hooks.threads.blocks[back.ts]) == ["Plan again"]
        (pointer,) = hooks.threads.texts_of(ALERT_TS)  # the pointer to the original thread
        assert "Fixbot fixed this issue before" in pointer.text
        assert labels(hooks.threads.blocks[pointer.ts]) == []
        assert await hooks.count(Task) == 1

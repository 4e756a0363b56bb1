"""Faults, not only crashes: an operator's bad day, end to end through the real app.

Each test injects one fault (a service answering 503/429, the database away, a replica
paused past its lease, an envelope delivered twice, `kill -9` between two side effects,
Slack away at shutdown, a revoked token) and checks what counts: no task lost, nothing
done twice, every failure told. Figures are printed (`pytest -s`) for benchmarks/README.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes.anthropic import pause, structured, tool
from fakes.proxy import LineProxy
from helpers import free_port
from sqlalchemy import text
from sqlalchemy.engine import make_url
from test_cli import fixbot, seed_task
from test_conversation import ASK, plan_script, post_alert, sentry_alert
from test_conversation import buttons as fixbot_buttons
from test_core_loop import (
    buttons,
    failure_report,
    script_execution,
    script_planning,
    start_plan,
    thread_texts,
)
from test_pool import restart_until_pull_request
from world import CHANNEL, World, plan_data, seed_sentry_issue

from storage.db import create_engine


def db(world: World) -> sqlite3.Connection:
    return sqlite3.connect(world.root / "fixbot.db")


async def wait_for_log(world: World, text: str, replica: int = 0, timeout: float = 60) -> None:
    """Wait until the replica's log holds `text` (bounded generously for a loaded machine)."""
    await world.slack.wait_for(lambda: text in world.app_log(replica), timeout=timeout, what=text)


# Start and stop


async def exit_of_start(world: World) -> str:
    """Start the app, which should exit 2 at once: its log."""
    await world.start_app(wait=False)
    assert world.process is not None
    code = await asyncio.to_thread(world.process.wait, 90)
    log = world.app_log()
    assert code == 2, log
    return log


async def test_a_revoked_token_exits_2_with_doctors_words(world: World) -> None:
    world.env["SLACK_BOT_TOKEN"] = "xoxb-revoked"  # the local Slack answers invalid_auth
    log = await exit_of_start(world)
    assert "Slack refused SLACK_BOT_TOKEN (invalid_auth)" in log
    assert "OAuth & Permissions" in log and "Traceback" not in log


async def test_an_unreachable_database_at_start_exits_2_without_a_traceback(
    world: World,
) -> None:
    world.env["DATABASE_URL"] = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/fixbot"
    log = await exit_of_start(world)
    assert "does not answer: check DATABASE_URL" in log and "Traceback" not in log


@pytest.mark.long
async def test_sigterm_while_slack_is_unreachable_stops_within_the_grace_period(
    world: World,
) -> None:
    world.env["SLACK_API_URL"] = f"http://127.0.0.1:{free_port()}/api/"  # nobody listens
    world.env.pop("ANTHROPIC_API_KEY")
    del world.config["limits"]["shutdown_grace_s"]  # the default grace period, as deployed
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


@pytest.mark.long
async def test_sentry_github_and_slack_errors_are_waited_out(world: World) -> None:
    seed_sentry_issue(world)
    script_planning(world)
    script_execution(world)
    # The look-up before the thread is posted meets the first 503 (the task starts anyway),
    # the first planning attempt the second.
    world.sentry.faults.fail(503, times=2)
    world.slack.force_429("chat.postMessage", retry_after=1, times=2)
    await world.start_app()
    started = time.monotonic()
    thread_ts, plan = await start_plan(world)
    planned_s = time.monotonic() - started
    texts = thread_texts(world, thread_ts)
    assert any("passing reason" in t and "HTTP 503" in t and "attempt 2" in t for t in texts)

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


async def test_a_service_away_past_three_attempts_is_still_waited_out(world: World) -> None:
    seed_sentry_issue(world)
    script_planning(world)
    # The look-up before the thread meets the first 503, planning attempts 1 to 3 the rest:
    # passing failures give their attempts back, so the fourth attempt plans.
    world.sentry.faults.fail(503, times=4)
    await world.start_app()
    started = time.monotonic()
    await world.slack.slash_command("SHOP-1")
    parent = (await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1]))[0]
    plan = await world.slack.wait_for(
        lambda: next((m for m in world.slack.thread(CHANNEL, parent["ts"]) if buttons(m)), None),
        timeout=180,  # three back-offs (0.5, 1 and 2 s here) and four plannings, loaded
        what="the plan after three passing failures",
    )
    planned_s = time.monotonic() - started
    texts = thread_texts(world, parent["ts"])
    assert buttons(plan)[:2] == ["Approve", "Reject"], texts
    assert any("passing reason" in t and "HTTP 503" in t and "attempt 4" in t for t in texts)
    assert world.sentry.faults.failed == 4
    print(f"Sentry away for 3 planning attempts: plan after {planned_s:.1f} s")


async def test_a_service_away_past_the_wait_limit_fails_the_step_saying_so(
    world: World,
) -> None:
    world.config["limits"]["transient_wait_s"] = 1
    seed_sentry_issue(world)
    world.sentry.faults.fail(503, times=1000)
    await world.start_app()
    await world.slack.slash_command("SHOP-1")
    parent = (await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1]))[0]
    failure = await failure_report(world, parent["ts"], timeout=60)
    texts = thread_texts(world, parent["ts"])
    assert any("stopped waiting" in t and "HTTP 503" in t for t in texts), texts

    # Retry runs the step again; Sentry still answers 503, so it fails again, saying so.
    await world.slack.click_button(CHANNEL, failure["ts"], "retry", user="U_BOB")
    await world.slack.wait_for(
        lambda: sum("stopped waiting" in t for t in thread_texts(world, parent["ts"])) == 2,
        timeout=60,
        what="the retried step's failure",
    )
    assert any("Retry requested by <@U_BOB>" in t for t in thread_texts(world, parent["ts"]))


@pytest.mark.long
async def test_slack_answering_503_for_a_while_is_waited_out(world: World) -> None:
    seed_sentry_issue(world)
    first = world.model.script([[pause(2), structured(plan_data())]], match="Plan a fix for SHOP-1")
    await world.start_app()
    await world.slack.slash_command("SHOP-1")
    parent = (await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1]))[0]
    await world.slack.wait_for(lambda: first.served == 1, timeout=60, what="planning")
    # Slack is down for the plan's message: two posts, each with the client's two retries.
    world.slack.force_503("chat.postMessage", times=6)
    started = time.monotonic()
    plan = await world.slack.wait_for(
        lambda: next((m for m in world.slack.thread(CHANNEL, parent["ts"]) if buttons(m)), None),
        timeout=120,
        what="the plan once Slack answered again",
    )
    recovered_s = time.monotonic() - started
    texts = thread_texts(world, parent["ts"])
    assert buttons(plan)[:2] == ["Approve", "Reject"], texts
    assert sum(bool(buttons(m)) for m in world.slack.thread(CHANNEL, parent["ts"])) == 1
    log = world.app_log()
    assert "posting the plan failed; trying again" in log and "HTTP 503" in log
    assert first.served == 1 and world.model.unexpected == []  # the agent did not run again
    assert "Traceback" not in log
    print(f"Slack 503 for 6 calls: plan {recovered_s:.1f} s later, 0 lost, 0 duplicates")


@pytest.mark.long
async def test_an_answer_given_at_once_reaches_the_agent(world: World) -> None:
    seed_sentry_issue(world)
    world.config["question_timeout_s"] = 60
    question = [pause(2), tool(ASK, {"question": "Is 100% a valid discount?"})]
    plan_script(world, first=question)
    await world.start_app()
    await world.slack.slash_command("SHOP-1")
    parent = (await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1]))[0]
    thread_ts = parent["ts"]
    await world.slack.wait_for(  # the step's status: the next message is the question
        lambda: len(world.slack.thread(CHANNEL, thread_ts)) >= 2, timeout=60, what="status"
    )
    # Slack shows the question at once but tells Fixbot it was posted only 5 s later: a
    # reply in between must find the question open.
    world.slack.answer_late("chat.postMessage", seconds=5)
    await world.slack.wait_for(
        lambda: any("The agent asks" in t for t in thread_texts(world, thread_ts)),
        timeout=60,
        what="the question",
    )
    await world.slack.reply_in_thread(CHANNEL, thread_ts, "Yes, 100% is valid.", user="U_BOB")
    await world.slack.wait_for(
        lambda: any(buttons(m) for m in world.slack.thread(CHANNEL, thread_ts)),
        timeout=60,
        what="the plan",
    )
    texts = thread_texts(world, thread_ts)
    assert any("Yes, 100% is valid." in json.dumps(r) for r in world.model.tool_results())
    assert not any("No answer" in t or "revis" in t.lower() for t in texts), texts


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
        refs = [ref for (ref,) in connection.execute("select ref_key from tasks")]
    # Either may be first: /fix is acknowledged before its reference is looked up.
    assert sorted(refs) == ["SHOP-1", "SHOP-2"]
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


# kill -9 between two side effects


def descendants(root_pid: int) -> list[int]:
    """Every process below `root_pid` (git runs in sessions of its own)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [root_pid]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        frontier += children
    return found


async def crash(world: World) -> None:
    """kill -9 the app and everything it started, as a power cut does."""
    assert world.process is not None
    for pid in [world.process.pid, *descendants(world.process.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    await world.stop_app()


PRE_RECEIVE_WAIT = """#!/bin/sh
touch "{reached}"
while [ ! -f "{released}" ]; do sleep 0.1; done
"""


@pytest.mark.parametrize(
    "point", ["after the fix commit", "after the push", "after the PR", "before the final message"]
)
@pytest.mark.long
async def test_kill_9_between_side_effects_ends_with_one_pull_request(
    world: World, point: str
) -> None:
    world.config["limits"].update(job_lease_s=2, sweep_interval_s=0.5)
    seed_sentry_issue(world)
    script_planning(world)
    script_execution(world)  # once: a resumed step finds the fix committed and skips the agent
    await world.start_app()
    thread_ts, plan = await start_plan(world)

    reached = world.root / "push-reached"
    hook = world.origin / "hooks" / "pre-receive"
    held = None
    if point == "after the fix commit":  # the push waits in the remote's hook
        hook.write_text(PRE_RECEIVE_WAIT.format(reached=reached, released=world.root / "never"))
        hook.chmod(0o755)
    elif point == "after the push":  # looking for the pull request waits
        held = world.github.faults.hold("GET", "/pulls")
    else:  # making the pull request ready waits
        held = world.github.faults.hold("POST", "/graphql")
    await world.slack.click_button(CHANNEL, plan["ts"], "approve", user="UBOB01")
    if held is None:
        await world.slack.wait_for(reached.exists, timeout=120, what="the push in the hook")
    else:
        await asyncio.wait_for(held.reached.wait(), 120)
    if point == "before the final message":
        # The next message is the final one: Slack holds it back long enough to crash.
        world.slack.force_429("chat.postMessage", retry_after=300, times=1)
        held.release()  # type: ignore[union-attr]
        await world.slack.wait_for(
            lambda: any(
                method == "chat.postMessage" and "Pull request ready" in str(args.get("text"))
                for method, args in world.slack.calls
            ),
            timeout=60,
            what="the final message on its way",
        )
    await crash(world)
    hook.unlink(missing_ok=True)
    if held is not None:
        held.release()

    recovery_s = await restart_until_pull_request(world, thread_ts, timeout=120)
    await world.stop_app()  # nothing more may come: a second message would show below
    messages = world.slack.thread(CHANNEL, thread_ts)
    finals = [m for m in messages if "Pull request ready" in m["text"]]
    assert len(finals) == 1, [m["text"] for m in messages]
    assert not any("Retry" in buttons(m) for m in messages)
    pulls = world.github.pulls("acme/shop")
    assert len(pulls) == 1 and not pulls[0].draft
    assert world.model.unexpected == []
    with db(world) as connection:
        state = connection.execute("select state, done_message_ts from tasks").fetchone()
    assert state == ("done", finals[0]["ts"])
    print(f"kill -9 {point}: recovered in {recovery_s:.1f} s, 1 PR, 1 final message")


# A replica paused past its lease


def replica_running(world: World, text: str) -> int | None:
    return next((r for r in world.processes if text in world.app_log(r)), None)


@pytest.mark.long
async def test_a_replica_paused_past_its_lease_leaves_the_job_to_the_one_that_took_it(
    world: World, postgres_database: str
) -> None:
    world.env["DATABASE_URL"] = postgres_database
    world.config["limits"].update(job_lease_s=3, sweep_interval_s=0.5)
    seed_sentry_issue(world)
    planning = world.model.script(
        [
            [pause(600), structured(plan_data())],  # the paused replica's turn, never answered
            [pause(3), structured(plan_data())],  # the resumed session, on the other replica
        ],
        match="Plan a fix for SHOP-1",
    )
    for replica in (0, 1):
        await world.start_app(replica=replica, wait=False)
    await world.slack.wait_connected(n=2, timeout=60)
    await world.slack.slash_command("SHOP-1")
    await world.slack.wait_for(lambda: planning.served == 1, timeout=60, what="the first turn")
    paused = replica_running(world, "planning step started")
    assert paused is not None
    other = 1 - paused
    os.killpg(world.processes[paused].pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        await wait_for_log(world, "planning step started", replica=other)
        taken_over_s = time.monotonic() - stopped
    finally:
        os.killpg(world.processes[paused].pid, signal.SIGCONT)
    await wait_for_log(world, "lease lost", replica=paused)
    parent = world.slack.messages(CHANNEL)[0]
    await world.slack.wait_for(
        lambda: any(buttons(m) for m in world.slack.thread(CHANNEL, parent["ts"])),
        timeout=60,
        what="the plan from the replica that took over",
    )
    done_s = time.monotonic() - stopped
    await world.stop_app()
    thread = world.slack.thread(CHANNEL, parent["ts"])
    assert sum(bool(buttons(m)) for m in thread) == 1
    assert not any("cancelled" in m["text"].lower() for m in thread)
    assert "lease lost" not in world.app_log(other)
    engine = create_engine(postgres_database)
    try:
        async with engine.connect() as connection:
            jobs = (await connection.execute(text("select status from jobs"))).all()
            state = (await connection.execute(text("select state from tasks"))).scalar()
    finally:
        await engine.dispose()
    assert [status for (status,) in jobs] == ["done"] and state == "awaiting_approval"
    print(
        f"replica paused past its lease: taken over after {taken_over_s:.1f} s, "
        f"plan after {done_s:.1f} s, 0 lost, 0 duplicates"
    )


# The database away mid-step


# Known defect (issue 10 stays open): when the outage outlasts the lease (5 s here), the
# running step's job is taken over after the database returns and, with planning
# concurrency 1, the resumed step can wait behind the old worker: the task never gets its
# plan. Seen in about half the runs on a loaded machine; passes on an idle one.
@pytest.mark.long
async def test_the_database_away_for_10_s_mid_step_loses_no_task(
    world: World, postgres_database: str
) -> None:
    real = make_url(postgres_database)
    assert real.host and real.port
    async with LineProxy(real.host, real.port) as line:
        world.env["DATABASE_URL"] = real.set(port=line.port).render_as_string(hide_password=False)
        port = free_port()
        world.env["FIXBOT_HTTP_PORT"] = str(port)
        world.config["concurrency"] = {"planning": 1, "execution": 1}
        world.config["limits"].update(job_lease_s=5, sweep_interval_s=0.5)
        refs = ["SHOP-1", "SHOP-2", "SHOP-3"]
        for ref in refs:
            seed_sentry_issue(world, ref)
        first = world.model.script(
            # Long enough that the other two are still queued when the line is cut, however
            # loaded the machine. A step whose result could not be recorded runs again
            # (resuming its session): each later turn answers with the plan again.
            [[pause(10), structured(plan_data())], *[[structured(plan_data())]] * 3],
            match="Plan a fix for SHOP-1",
        )
        # A re-run whose session cannot be resumed (its transcript's last lines were lost
        # with the database) starts a new session: a script serves that one too.
        for _ in range(2):
            world.model.script([[structured(plan_data())]], match="Plan a fix for SHOP-1")
        for ref in refs[1:]:
            script_planning(world, ref)
        await world.start_app()
        # SHOP-1 first, alone: commands sent together are handled in either order.
        await world.slack.slash_command(refs[0])
        await world.slack.wait_for(lambda: first.served == 1, timeout=60, what="SHOP-1 planning")
        for ref in refs[1:]:
            await world.slack.slash_command(ref)
        await world.slack.wait_for(  # the other two are queued (their "ahead" notes posted)
            lambda: sum("ahead" in m["text"] for m in all_thread_messages(world)) == 2,
            timeout=60,
            what="two tasks waiting",
        )
        await line.cut()  # while the step waits for its answer, then records it
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            await wait_for_log(world, "failed; trying again in")  # a worker waits it out
            assert (await client.get("/readyz")).status_code == 503
            await asyncio.sleep(10)  # the outage itself
            await line.restore()
            restored = time.monotonic()
            parents = world.slack.messages(CHANNEL)
            await world.slack.wait_for(
                lambda: all(
                    any(buttons(m) for m in world.slack.thread(CHANNEL, p["ts"])) for p in parents
                ),  # a plan, or a failure with Retry: both end the wait, only one passes
                timeout=180,
                what="every task's plan",
            )
            recovery_s = time.monotonic() - restored
            ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert len(parents) == 3
        for parent in parents:
            thread = world.slack.thread(CHANNEL, parent["ts"])
            texts = [m["text"] for m in thread]
            assert [buttons(m)[:2] for m in thread if buttons(m)] == [["Approve", "Reject"]], texts
        assert "Traceback" not in world.app_log()
    print(f"database away 10 s mid-step: all 3 plans {recovery_s:.1f} s after it came back")


# What people type is kept whole


async def test_a_reference_longer_than_200_characters_is_kept_whole(
    world: World, postgres_database: str
) -> None:
    world.env["DATABASE_URL"] = postgres_database
    await world.start_app()
    words = "checkout totals go negative when the discount is a whole percent " * 5
    ack = await world.slack.slash_command(f"repo:acme/shop {words}")
    assert ack.latency_s < 3
    await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1], what="the thread")
    await world.stop_app()
    engine = create_engine(postgres_database)
    try:
        async with engine.connect() as connection:
            ref_key = (await connection.execute(text("select ref_key from tasks"))).scalar()
    finally:
        await engine.dispose()
    assert ref_key == words.strip() and len(ref_key) > 200


# A task left without a job


async def test_an_active_task_without_a_job_is_queued_again(world: World) -> None:
    world.config["limits"].update(job_lease_s=1, sweep_interval_s=0.5)
    seed_sentry_issue(world)
    script_planning(world)
    task_id = await seed_task(world, "planning")  # its job's end was never told
    thread_ts = world.slack.messages(CHANNEL)[0]["ts"]
    await world.start_app()
    await world.slack.wait_for(
        lambda: any(buttons(m)[:1] == ["Approve"] for m in world.slack.thread(CHANNEL, thread_ts)),
        timeout=60,
        what="the plan of the task the sweep found",
    )
    assert f"task {task_id} had no job; its planning step is queued again" in world.app_log()

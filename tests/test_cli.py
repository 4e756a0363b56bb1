"""The `fixbot` command, run as a person would, against a test database and the local Slack."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

import yaml
from launcher import launch
from slack_sdk.web.async_client import AsyncWebClient
from test_core_loop import buttons
from test_pool import claude_processes, start_slow_planning
from test_workers import worker_pids
from world import CHANNEL, ROOT, World, plan_data, seed_sentry_issue

from storage.db import create_engine, migrate, sessionmaker
from storage.tables import AgentRun, Job, Task, TaskEvent


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


async def fixbot(world: World, *args: str, **env: str | None) -> Run:
    """Run the `fixbot` script in the world's directory with its settings (through
    tests/launcher.py, which has its imports done already)."""
    (world.root / "fixbot.yml").write_text(yaml.safe_dump(world.config))
    environment = {**world.env}
    for name, value in env.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    number = len(list(world.root.glob("fixbot-*.out")))
    out, err = world.root / f"fixbot-{number}.out", world.root / f"fixbot-{number}.err"
    process = launch("fixbot", *args, cwd=world.root, env=environment, stdout=out, stderr=err)
    code = await asyncio.to_thread(process.wait, 120)
    return Run(code, out.read_text(), err.read_text())


async def seed_task(world: World, state: str, **values: Any) -> int:
    """A task row in `state` with a thread parent posted by the bot, and its first event."""
    client = AsyncWebClient(token=world.slack.bot_token, base_url=world.slack.api_url)
    parent = await client.chat_postMessage(channel=CHANNEL, text="SHOP-1 · a task")
    await client.session.close() if client.session else None
    engine = create_engine(world.env["DATABASE_URL"])
    await migrate(engine)
    try:
        async with sessionmaker(engine).begin() as session:
            task = Task(
                state=state,
                ref_kind="sentry",
                ref_key="SHOP-1",
                title=values.pop("title", "AssertionError: discount made the price negative"),
                repo="acme/shop",
                channel_id=CHANNEL,
                thread_ts=str(parent["ts"]),
                priority=0,
                **values,
            )
            session.add(task)
            await session.flush()
            session.add(TaskEvent(task_id=task.id, to_state="queued", actor="U_ALICE"))
            return task.id
    finally:
        await engine.dispose()


async def add_rows(world: World, *rows: Any) -> None:
    engine = create_engine(world.env["DATABASE_URL"])
    try:
        async with sessionmaker(engine).begin() as session:
            session.add_all(rows)
    finally:
        await engine.dispose()


def db(world: World) -> sqlite3.Connection:
    return sqlite3.connect(world.root / "fixbot.db")


# doctor


async def test_doctor_passes_with_good_settings(world: World) -> None:
    engine = create_engine(world.env["DATABASE_URL"])
    await migrate(engine)
    await engine.dispose()
    run = await fixbot(world, "doctor")
    assert run.code == 0, run.out + run.err
    checks = {line[2:].split(":", 1)[0]: line for line in run.lines}
    for name in (
        "settings",
        "git",
        "claude code",
        "claude credentials",
        "slack bot token",
        "slack app token",
        "database",
        "repo acme/shop",
        "sentry",
        "github",
    ):
        assert checks[name].startswith("✓"), run.out
    assert "@fixbot" in checks["slack bot token"]
    assert "schema at" in checks["database"]
    assert checks["jira"].startswith("–") and "skipped: not configured" in checks["jira"]
    assert run.err == ""


async def test_doctor_names_a_bad_token_and_what_to_do(world: World) -> None:
    run = await fixbot(world, "doctor", SLACK_BOT_TOKEN="xoxb-not-the-right-one")
    assert run.code == 1
    failed = [line for line in run.lines if line.startswith("✗")]
    assert len(failed) == 1, run.out
    assert failed[0].startswith("✗ slack bot token: Slack refused SLACK_BOT_TOKEN (invalid_auth)")
    assert "OAuth & Permissions" in failed[0]
    assert "xoxb-not-the-right-one" not in run.out
    assert "Traceback" not in run.err


async def test_doctor_reports_missing_settings_and_unreachable_services(world: World) -> None:
    world.config["repos"][0]["clone_url"] = (world.root / "nowhere.git").as_uri()
    run = await fixbot(world, "doctor", SLACK_APP_TOKEN=None, GITHUB_API_URL="http://127.0.0.1:9/")
    assert run.code == 1
    assert run.lines[0].startswith("✗ settings: SLACK_APP_TOKEN is not set")
    assert any(line.startswith("✓ git:") for line in run.lines)
    assert any(line.startswith("– database: skipped") for line in run.lines)
    assert "Traceback" not in run.err

    run = await fixbot(world, "doctor", GITHUB_API_URL="http://127.0.0.1:9/")
    assert run.code == 1
    failed = [line for line in run.lines if line.startswith("✗")]
    assert [line.split(":")[0] for line in failed] == ["✗ repo acme/shop", "✗ github"], run.out
    assert "check GITHUB_TOKEN" in failed[1]
    assert "Traceback" not in run.err


# tasks list / show


async def test_list_and_show(world: World) -> None:
    failed = await seed_task(world, "failed", failure="tests did not pass", cost_usd=0.42)
    waiting = await seed_task(world, "awaiting_approval", plan_version=1)
    await add_rows(
        world,
        TaskEvent(task_id=failed, from_state="queued", to_state="planning"),
        TaskEvent(task_id=failed, from_state="planning", to_state="failed", detail={"reason": "x"}),
        AgentRun(
            task_id=failed,
            step="planning",
            session_id="s-1",
            outcome="success",
            cost_usd=0.25,
            input_tokens=1200,
            output_tokens=300,
            turns=4,
            duration_s=12.5,
        ),
        AgentRun(task_id=failed, step="execution", outcome="error", cost_usd=0.17, error="boom"),
    )

    run = await fixbot(world, "tasks", "list")
    assert run.code == 0, run.err
    assert run.lines[0].split() == ["ID", "STATE", "REF", "REPO", "SPEND", "CREATED", "TITLE"]
    assert [line.split()[:2] for line in run.lines[1:]] == [
        [str(waiting), "awaiting_approval"],
        [str(failed), "failed"],
    ]
    run = await fixbot(world, "tasks", "list", "--state", "failed", "--limit", "5")
    assert [line.split()[0] for line in run.lines[1:]] == [str(failed)]
    run = await fixbot(world, "tasks", "list", "--state", "done")
    assert run.code == 0 and run.out.strip() == "no tasks in state done"
    run = await fixbot(world, "tasks", "list", "--state", "sleeping")
    assert run.code == 2 and "invalid choice" in run.err

    run = await fixbot(world, "tasks", "show", str(failed))
    assert run.code == 0, run.err
    assert run.lines[0] == f"Task {failed} · failed · sentry SHOP-1"
    assert "tests did not pass" in run.out
    events = run.out.split("Events")[1].split("Agent runs")[0]
    assert [line.split()[2:5] for line in events.strip().splitlines()] == [
        ["·", "→", "queued"],
        ["queued", "→", "planning"],
        ["planning", "→", "failed"],
    ]
    assert "by U_ALICE" in events
    runs = run.out.split("Agent runs")[1]
    assert "$0.2500" in runs and "1200 in / 300 out tokens" in runs and "4 turns" in runs
    assert "12.5 s" in runs and "session s-1" in runs and "error: boom" in runs
    assert "Total spend: $0.4200 over 2 agent run(s)" in run.out

    run = await fixbot(world, "tasks", "show", "999")
    assert run.code == 2
    assert run.err.strip() == "fixbot: there is no task 999"


# tasks create / requeue / cancel


async def test_create_like_fix(world: World) -> None:
    seed_sentry_issue(world)  # looked up first, as /fix does
    run = await fixbot(world, "tasks", "create", "SHOP-1")
    assert run.code == 0, run.err
    assert run.out.startswith("created task 1 (sentry SHOP-1) in C_GENERAL")
    parents = world.slack.messages(CHANNEL)
    assert len(parents) == 1 and "discount made the price negative" in parents[0]["text"]
    with db(world) as connection:
        task = connection.execute("select state, thread_ts, requested_by from tasks").fetchone()
        jobs = connection.execute("select kind, status from jobs").fetchall()
        events = connection.execute("select to_state, actor from task_events").fetchall()
    assert task == ("queued", parents[0]["ts"], "cli")
    assert jobs == [("planning", "queued")]
    assert events == [("queued", "cli")]

    run = await fixbot(world, "tasks", "create", "the", "cart", "is", "slow")
    assert run.code == 2
    assert "repo:owner/name" in run.err and len(run.err.strip().splitlines()) == 1
    world.config["alert_channels"] = []
    run = await fixbot(world, "tasks", "create", "SHOP-2")
    assert run.code == 2 and "--channel" in run.err
    with db(world) as connection:
        assert connection.execute("select count(*) from tasks").fetchone() == (1,)


async def test_requeue_a_failed_task(world: World) -> None:
    task_id = await seed_task(world, "failed", failure="Claude Code kept failing")
    run = await fixbot(world, "tasks", "requeue", str(task_id))
    assert run.code == 0, run.err
    assert run.out.strip() == f"task {task_id} is queued again; its step is queued"
    with db(world) as connection:
        assert connection.execute("select state from tasks").fetchone() == ("queued",)
        assert connection.execute("select kind, status from jobs").fetchall() == [
            ("planning", "queued")
        ]
        last = connection.execute(
            "select from_state, to_state, actor from task_events order by id desc"
        ).fetchone()
    assert last == ("failed", "queued", "cli")
    thread = world.slack.thread(CHANNEL, world.slack.messages(CHANNEL)[0]["ts"])
    assert "Retry requested" in thread[-1]["text"]

    run = await fixbot(world, "tasks", "requeue", str(task_id))
    assert run.code == 2 and run.err.startswith("fixbot: ") and "queued" in run.err
    run = await fixbot(world, "tasks", "requeue", "42")
    assert run.code == 2 and run.err.strip() == "fixbot: There is no task 42."


async def test_requeue_with_a_plan_goes_back_to_execution(world: World) -> None:
    task_id = await seed_task(
        world, "failed", plan=plan_data(), plan_version=1, decided_by="U_BOB", failure="x"
    )
    run = await fixbot(world, "tasks", "requeue", str(task_id))
    assert run.code == 0, run.err
    with db(world) as connection:
        assert connection.execute("select state from tasks").fetchone() == ("approved",)
        assert connection.execute("select kind from jobs").fetchall() == [("execution",)]


async def test_cancel_a_queued_task(world: World) -> None:
    task_id = await seed_task(world, "queued")
    await add_rows(world, Job(task_id=task_id, kind="planning", status="queued"))
    run = await fixbot(world, "tasks", "cancel", str(task_id))
    assert run.code == 0, run.err
    assert run.out.strip() == f"task {task_id} is cancelled"
    with db(world) as connection:
        assert connection.execute("select state from tasks").fetchone() == ("cancelled",)
        assert connection.execute("select status from jobs").fetchall() == [("cancelled",)]
        last = connection.execute(
            "select from_state, to_state, actor from task_events order by id desc"
        ).fetchone()
    assert last == ("queued", "cancelled", "cli")
    thread = world.slack.thread(CHANNEL, world.slack.messages(CHANNEL)[0]["ts"])
    assert "Cancelled" in thread[-1]["text"]

    run = await fixbot(world, "tasks", "cancel", str(task_id))
    assert run.code == 2 and run.err.strip() == "fixbot: This task was cancelled."


async def test_cancel_a_step_running_in_the_app(world: World) -> None:
    """The CLI runs no step itself, like a second replica: the app's running step learns of
    the cancel from the database, at its next heartbeat, and stops."""
    world.config["limits"]["job_lease_s"] = 3  # a heartbeat each second
    thread_ts = await start_slow_planning(world, seconds=120)
    assert world.process is not None
    assert worker_pids(world) == []  # tests/world.py's `processes: 0`: the step is in the app
    with db(world) as connection:
        ((task_id, job_status),) = connection.execute(
            "select tasks.id, jobs.status from tasks join jobs on jobs.task_id = tasks.id"
        ).fetchall()
    assert job_status == "running"

    run = await fixbot(world, "tasks", "cancel", str(task_id))

    assert run.code == 0, run.err
    # The model holds its answer for 120 s: a step still running at 60 s was never stopped.
    await world.slack.wait_for(
        lambda: not claude_processes(world.process.pid), timeout=60, what="no Claude Code left"
    )
    with db(world) as connection:
        assert connection.execute("select state from tasks").fetchone() == ("cancelled",)
        assert connection.execute("select status from jobs").fetchall() == [("cancelled",)]
    await world.slack.wait_for(
        lambda: any(
            "cancelled" in m["text"].lower() and "Planning" in m["text"]
            for m in world.slack.thread(CHANNEL, thread_ts)[1:]
        ),
        what="the step's status line saying it was cancelled",
    )
    assert not any(buttons(m) for m in world.slack.thread(CHANNEL, thread_ts))


# tasks transcript (of a real planning run: tests/test_metrics_logs.py)


def write_session(world: World, session_id: str) -> None:
    entries: list[dict[str, Any]] = [
        {"type": "queue-operation", "operation": "enqueue"},
        {"type": "user", "message": {"role": "user", "content": "Plan a fix for SHOP-1"}},
        {
            "type": "assistant",
            "message": {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm"},
                    {"type": "text", "text": "Reading the code."},
                    {
                        "type": "tool_use",
                        "id": "t1",
                        "name": "Read",
                        "input": {"file_path": "a.py"},
                    },
                ],
            },
        },
        {
            "type": "user",
            "message": {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "1\tx = 1"}],
            },
        },
        {
            "type": "assistant",
            "message": {
                "role": "assistant",
                "content": [{"type": "text", "text": "The token is xoxb-local, oops."}],
            },
        },
    ]
    folder = world.workdir / "claude-home" / ".claude" / "projects" / "-tmp-work-tasks-x"
    folder.mkdir(parents=True)
    (folder / f"{session_id}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))


async def test_transcript(world: World) -> None:
    task_id = await seed_task(world, "awaiting_approval")
    empty = await seed_task(world, "queued")
    await add_rows(
        world,
        AgentRun(task_id=task_id, step="planning", session_id="sess-1", outcome="success"),
    )
    write_session(world, "sess-1")

    run = await fixbot(world, "tasks", "transcript", str(task_id), "--step", "planning")
    assert run.code == 0, run.err
    assert run.lines[0].startswith("=== planning · session sess-1 · success")
    assert run.lines[1:] == [
        "[user] Plan a fix for SHOP-1",
        "[assistant] Reading the code.",
        '  → Read {"file_path": "a.py"}',
        "  ← 1\tx = 1",
        "[assistant] The token is [redacted], oops.",
    ]

    run = await fixbot(world, "tasks", "transcript", str(task_id), "--step", "execution")
    assert run.code == 2 and "no execution run" in run.err
    run = await fixbot(world, "tasks", "transcript", str(empty))
    assert run.code == 2
    run = await fixbot(world, "tasks", "transcript", "77")
    assert run.code == 2 and run.err.strip() == "fixbot: there is no task 77"


async def test_run_is_the_app_and_says_what_is_missing(world: World) -> None:
    run = await fixbot(world, "run", SLACK_BOT_TOKEN=None)
    assert run.code == 2
    assert run.err.startswith("fixbot: SLACK_BOT_TOKEN is not set")
    assert "Traceback" not in run.err
    assert (ROOT / "pyproject.toml").read_text().count('fixbot = "bot.cli:main"') == 1

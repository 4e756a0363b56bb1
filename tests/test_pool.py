"""The job pool: a step's time limit, the task budget, stale work and the model's errors
in-process on the real `WorkerPool` (tests/memory.py); cancel and crash recovery end to end."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import pytest
from fakes.anthropic import pause, structured, text, tool
from memory import Machine, build_machine
from sqlalchemy import select, update
from test_core_loop import TITLE, script_planning, start_plan, thread_texts
from test_lifecycle import BUG
from world import CHANNEL, FIXED_PRICING, NEW_TEST, World, plan_data, seed_sentry_issue

from agents.runner import AgentPermanentError, AgentTransientError
from bot.jobs import Outcome, WorkerPool
from bot.models import State
from repos.workspace import branch_name
from storage.jobs import JobKind, JobStatus
from storage.tables import AgentRun, Job, Task, utcnow

EXECUTION_MATCH = "Implement the approved plan for SHOP-1"
# Bounds a stuck test's wait; the in-process steps here end in well under a second.
STUCK_S = 60


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


# In-process: the real pool and task machinery on the in-memory seams.


async def run_in_pool(machine: Machine) -> None:
    """Run the queued step in the real `WorkerPool`, with the handlers the app gives it
    (bot/wiring.running_pool), until it has ended for good: its handler returned, or the
    pool failed its task. A step that failed for a passing reason runs again meanwhile."""
    ended = asyncio.Event()

    async def run_job(job: Job) -> Outcome:
        outcome = await machine.workflow.run_job(job)
        ended.set()
        return outcome

    async def fail(task_id: int, told: str) -> None:
        await machine.workflow.fail(task_id, told)
        ended.set()

    pool = WorkerPool(machine.workflow.settings, machine.queue)
    handlers = {JobKind.PLANNING: run_job, JobKind.EXECUTION: run_job}
    pool.start(handlers, on_failure=fail, sweep=machine.workflow.sweep)
    try:
        async with asyncio.timeout(STUCK_S):
            await ended.wait()
    finally:
        await pool.stop(grace_s=STUCK_S)  # the step, ended, records its outcome and goes


async def jobs_of(machine: Machine, task: Task) -> list[Job]:
    async with machine.sessions() as session:
        return list(
            await session.scalars(select(Job).where(Job.task_id == task.id).order_by(Job.id))
        )


async def test_a_step_past_its_timeout_is_stopped_and_reported(tmp_path: Path) -> None:
    async with build_machine(tmp_path, limits={"planning_timeout_s": 0.6}) as machine:
        machine.agent.hold = asyncio.Event()  # never set: the agent would run on for good
        task = await machine.workflow.request_fix(BUG, channel=CHANNEL, user="U_ALICE")
        await run_in_pool(machine)

        task = await machine.workflow.store.fresh(task)
        told = "The planning step ran past its 1 s limit and was stopped."  # 0.6 s, rounded
        assert (task.state, task.failure) == (State.FAILED, told)
        assert any(told in text for text in machine.threads.texts(task.thread_ts))
        # The agent's run was stopped (on a busy machine the limit may be up before it starts).
        assert machine.agent.cancelled == machine.agent.steps
        [job] = await jobs_of(machine, task)
        assert (job.status, job.last_error) == (JobStatus.FAILED, "timed out")


async def test_a_step_that_reaches_the_task_budget_stops_and_says_so(tmp_path: Path) -> None:
    async with build_machine(tmp_path, limits={"task_budget_usd": 0.01}) as machine:
        machine.agent.outcome = "error_max_budget"  # as Claude Code ends at its max budget
        task = await machine.workflow.request_fix(BUG, channel=CHANNEL, user="U_ALICE")
        _job, outcome = await machine.run_next_job()

        assert machine.agent.steps[0].max_budget_usd == pytest.approx(0.01)  # where it stops
        task = await machine.workflow.store.fresh(task)
        told = "The step reached the task budget of $0.01 and stopped."
        assert (outcome.status, outcome.reason) == (JobStatus.FAILED, told)
        assert (task.state, task.failure) == (State.FAILED, told)
        texts = machine.threads.texts(task.thread_ts)
        assert any(told in text for text in texts)
        assert task.plan_message_ts is None  # no plan to approve
        assert not any("Plan v1" in text for text in texts)


async def test_a_job_that_waits_too_long_in_the_queue_fails_with_the_reason(
    tmp_path: Path,
) -> None:
    async with build_machine(tmp_path, limits={"queued_ttl_hours": 24}) as machine:
        running = await machine.workflow.request_fix(BUG, channel=CHANNEL, user="U_ALICE")
        waiting = await machine.workflow.request_fix(BUG, channel=CHANNEL, user="U_ALICE")
        step = await machine.queue.claim([JobKind.PLANNING])  # the one worker's, running
        assert step is not None and step.task_id == running.id
        async with machine.sessions.begin() as session:  # both jobs were made two days ago
            await session.execute(update(Job).values(created_at=utcnow() - timedelta(days=2)))
        await machine.workflow.sweep()  # as the pool's maintenance does

        waiting = await machine.workflow.store.fresh(waiting)
        told = "The step waited in the queue for more than 24 h."
        assert (waiting.state, waiting.failure) == (State.FAILED, told)
        assert any(told in text for text in machine.threads.texts(waiting.thread_ts))
        assert [job.status for job in await jobs_of(machine, waiting)] == [JobStatus.CANCELLED]
        # The running step waits in no queue: it runs on, and its task is not failed.
        running = await machine.workflow.store.fresh(running)
        assert running.state == State.QUEUED and running.failure is None
        assert await machine.queue.status_of(step.id) == JobStatus.RUNNING
        assert not any("Failed" in text for text in machine.threads.texts(running.thread_ts))


async def test_an_overloaded_model_is_retried_with_backoff(tmp_path: Path) -> None:
    backoff = 0.2
    async with build_machine(tmp_path, limits={"retry_backoff_s": backoff}) as machine:
        overload = "Claude Code could not reach the model: API Error: 529 Overloaded"
        machine.agent.errors = [AgentTransientError(overload)]
        task = await machine.workflow.request_fix(BUG, channel=CHANNEL, user="U_ALICE")
        await run_in_pool(machine)

        task = await machine.workflow.store.fresh(task)
        assert task.state == State.AWAITING_APPROVAL and task.plan_message_ts is not None
        assert "Plan v1" in machine.threads.messages[task.plan_message_ts].text
        texts = machine.threads.texts(task.thread_ts)
        assert any(
            f"passing reason ({overload})" in text and "attempt 2" in text for text in texts
        ), texts
        assert [step.name for step in machine.agent.steps] == [JobKind.PLANNING] * 2
        [job] = await jobs_of(machine, task)
        assert (job.status, job.attempts) == (JobStatus.DONE, 2)
        # Put back for half to all of the backoff (jitter), and not run again before.
        assert job.transient_since is not None
        delay_s = (job.run_after - job.transient_since).total_seconds()
        assert backoff / 2 <= delay_s <= backoff
        async with machine.sessions() as session:
            runs = list(await session.scalars(select(AgentRun).order_by(AgentRun.id)))
        assert [run.error is None for run in runs] == [False, True]
        assert runs[1].started_at >= job.run_after


async def test_a_permanent_model_error_fails_at_once_in_plain_words(machine: Machine) -> None:
    refusal = "The model API refused Claude Code's request: prompt is too long"
    machine.agent.errors = [AgentPermanentError(refusal)]
    task = await machine.workflow.request_fix(BUG, channel=CHANNEL, user="U_ALICE")
    await run_in_pool(machine)

    task = await machine.workflow.store.fresh(task)
    told = f"Claude Code could not run this step: {refusal}"
    assert (task.state, task.failure) == (State.FAILED, told)
    texts = machine.threads.texts(task.thread_ts)
    assert any(told in text for text in texts)
    assert len(machine.agent.steps) == 1  # not retried: it would fail the same way
    assert not any("attempt 2" in text for text in texts)
    [job] = await jobs_of(machine, task)
    assert (job.status, job.last_error, job.attempts) == (JobStatus.FAILED, refusal, 1)

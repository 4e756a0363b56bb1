"""Worker processes: agent steps run apart from the process that answers Slack."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest
from fakes.anthropic import structured, tool
from helpers import free_port
from test_core_loop import TITLE, script_planning, start_plan
from test_pool import claude_processes, start_slow_planning
from world import World, plan_data, seed_sentry_issue

from repos.workspace import branch_name

BURST = 50


@pytest.fixture(autouse=True)
def worker_processes(world: World) -> None:
    """The default: one worker process beside the Slack side (tests/world.py turns it off)."""
    world.config["workers"] = {"processes": 1}


def worker_pids(world: World) -> list[int]:
    """The app's `fixbot worker` children."""
    assert world.process is not None
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == world.process.pid and b"worker" in command:
            pids.append(int(entry.name))
    return pids


async def test_agent_steps_run_in_a_worker_process_not_beside_slack(world: World) -> None:
    await start_slow_planning(world)
    assert world.process is not None
    (worker,) = worker_pids(world)
    assert claude_processes(worker)  # the step's Claude Code runs under the worker
    direct = [
        pid for pid in claude_processes(world.process.pid) if pid not in claude_processes(worker)
    ]
    assert direct == []


async def test_a_burst_of_commands_while_steps_run_is_acknowledged_in_time(world: World) -> None:
    """Slack's 3 s limit, under load: no envelope is delivered twice (a correctness
    check; ack_burst.py measures the latencies)."""
    world.config["concurrency"] = {"planning": 3, "execution": 2}
    refs = ["SHOP-101", "SHOP-102", "SHOP-103"]
    for ref in refs:
        seed_sentry_issue(world, ref)
        worktree = world.worktree(branch_name(ref, TITLE))
        reading = [tool("Grep", {"pattern": "discount", "path": str(worktree)})]
        world.model.script(
            [reading] * 200 + [[structured(plan_data())]], match=f"Plan a fix for {ref}"
        )
    await world.start_app()
    for ref in refs:
        await world.slack.slash_command(ref)
    assert world.process is not None
    await world.slack.wait_for(
        lambda: len(claude_processes(world.process.pid)) >= 3, timeout=120, what="3 steps"
    )

    acks = await asyncio.gather(
        *(world.slack.slash_command("hello world", user="U_BURST") for _ in range(BURST))
    )
    await world.slack.wait_for(
        lambda: len(world.slack.ephemerals("U_BURST")) >= BURST, timeout=120, what="the answers"
    )
    assert [ack.retry_attempt for ack in acks] == [0] * BURST
    assert len(claude_processes(world.process.pid)) >= 3  # the steps were still running


async def test_a_worker_that_dies_is_started_again(world: World) -> None:
    port = free_port()
    world.env["FIXBOT_HTTP_PORT"] = str(port)
    seed_sentry_issue(world)
    script_planning(world)
    await world.start_app()
    await world.slack.wait_for(lambda: worker_pids(world), timeout=60, what="the worker")
    (first,) = worker_pids(world)
    os.kill(first, signal.SIGKILL)
    await world.slack.wait_for(
        lambda: [pid for pid in worker_pids(world) if pid != first],
        timeout=60,
        what="a new worker",
    )
    async with aiohttp.ClientSession() as http:
        for _ in range(300):  # the new worker is counted once it runs
            async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                if (await response.json())["workers"]:
                    break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("/readyz never counted the new worker")
    assert "exited with -9; starting another" in world.app_log()
    # The new worker runs steps.
    await start_plan(world)


async def test_a_stop_signal_stops_the_workers_too(world: World) -> None:
    await world.start_app()
    await world.slack.wait_for(lambda: worker_pids(world), timeout=60, what="the worker")
    await world.slack.wait_for(
        lambda: "claiming jobs" in world.app_log(), timeout=60, what="the worker claiming"
    )
    assert await world.stop_app() == 0
    log = world.app_log()
    assert "worker stopping: no new work" in log  # the app's SIGTERM, not the kill that follows
    assert log.index("worker stopping") < log.index('"stopped"')

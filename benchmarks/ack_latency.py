"""Slack acknowledgement latency of /fix, against a bare Bolt app measured in the same run.

    .venv/bin/python benchmarks/ack_latency.py [--n 200] [--tasks 3] [--turns 400]

Latency is LocalSlack's `Ack.latency_s`: from the envelope being written to the Socket Mode
connection to the acknowledgement arriving, over loopback. Three cases, one after another:

(a) baseline: `benchmarks/bare_app.py`, a Bolt AsyncApp that only acks /fix;
(b) idle: the real Fixbot (`python app.py`) answering /fix with a bad reference;
(c) busy: the same Fixbot while `--tasks` planning steps run Claude Code against the
    scripted model, each calling Read, Grep and Bash for up to `--turns` turns;
(d) the bare app again, on its own LocalSlack, while (c)'s steps still run: how much of
    (c) the machine's load explains, whatever Fixbot's event loop does.

Commands are sent one at a time; in (b) and (c) the next waits for the ephemeral answer
of the previous one, so no command queues behind another. The first `--warmup` commands
of each case (Bolt's first auth.test, imports on first use) are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from fakes.anthropic import Script, structured, tool  # noqa: E402
from fakes.slack import Ack, LocalSlack  # noqa: E402
from test_core_loop import TITLE  # noqa: E402
from world import World, make_world, plan_data, seed_sentry_issue  # noqa: E402

from repos.workspace import branch_name  # noqa: E402

BAD_REFERENCE = "hello world"  # no repo:owner/name, so Fixbot answers with an ephemeral
BENCH_USER = "U_BENCH"


@dataclass
class Case:
    name: str
    latencies_s: list[float]
    note: str = ""

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile."""
        ordered = sorted(self.latencies_s)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1]


async def send_commands(
    slack: LocalSlack,
    n: int,
    warmup: int,
    after_each: Callable[[int], Awaitable[None]] | None = None,
) -> list[float]:
    """Type `/fix BAD_REFERENCE` warmup + n times; the latencies of the last n."""
    latencies: list[float] = []
    for index in range(warmup + n):
        seen = len(slack.ephemerals(BENCH_USER))
        ack: Ack = await slack.slash_command(BAD_REFERENCE, user=BENCH_USER)
        if ack.retry_attempt:
            raise AssertionError(f"an envelope needed {ack.retry_attempt} redeliveries")
        if after_each is not None:
            await after_each(seen)
        if index >= warmup:
            latencies.append(ack.latency_s)
    return latencies


@contextlib.asynccontextmanager
async def bare_app(log_path: Path, *options: str) -> AsyncIterator[LocalSlack]:
    """`bare_app.py options` in its own process, against its own LocalSlack."""
    async with LocalSlack() as slack:
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "SLACK_BOT_TOKEN": slack.bot_token,
            "SLACK_APP_TOKEN": slack.app_token,
            "SLACK_API_URL": slack.api_url,
        }
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(BENCHMARKS / "bare_app.py"),
                *options,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            await slack.wait_connected(n=1, timeout=60)
            yield slack
        finally:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def bare_app_latencies(n: int, warmup: int, log_path: Path) -> list[float]:
    async with bare_app(log_path) as slack:
        return await send_commands(slack, n, warmup)


def answered(world: World) -> Callable[[int], Awaitable[None]]:
    """Wait until Fixbot's ephemeral answer to the last command arrived."""

    async def wait(seen: int) -> None:
        await world.slack.wait_for(
            lambda: world.slack.ephemerals(BENCH_USER)[seen:], timeout=30, what="the answer"
        )

    return wait


def script_busy_planning(world: World, ref: str, turns: int) -> Script:
    """A planning step that reads and searches for `turns` turns before it plans."""
    worktree = world.worktree(branch_name(ref, TITLE))
    searches = [
        tool("Read", {"file_path": str(worktree / "shop" / "pricing.py")}),
        tool("Bash", {"command": "grep -rn apply_discount ."}),
        tool("Grep", {"pattern": "discount", "path": str(worktree)}),
        tool("Bash", {"command": "find . -name '*.py'"}),
        tool("Read", {"file_path": str(worktree / "tests" / "test_pricing.py")}),
    ]
    return world.model.script(
        [[searches[turn % len(searches)]] for turn in range(turns)]
        + [
            [tool("Write", {"file_path": str(worktree / "PLAN.md"), "content": "# Plan\n"})],
            [structured(plan_data())],
        ],
        match=f"Plan a fix for {ref}",
    )


async def fixbot_cases(
    n: int, warmup: int, tasks: int, turns: int, root: Path
) -> tuple[Case, Case, Case]:
    """(b), (c) and (d): one Fixbot idle, then with `tasks` planning steps running, and
    the bare app again while those steps still run (the share of (c) due to the machine)."""
    async with make_world(root) as world:
        steps = prepare_busy_steps(world, tasks, turns)
        scripts = list(steps.values())
        await world.start_app()

        idle_latencies = await send_commands(world.slack, n, warmup, answered(world))
        idle = Case("(b) Fixbot, idle", idle_latencies)

        await start_busy_steps(world, steps)
        served_before = sum(script.served for script in scripts)
        started = time.monotonic()
        busy_latencies = await send_commands(world.slack, n, 0, answered(world))
        busy = Case("(c) Fixbot, agent steps running", busy_latencies)
        busy.note = load_note(scripts, served_before, started)

        served_before, started = sum(script.served for script in scripts), time.monotonic()
        bare_latencies = await bare_app_latencies(n, warmup, root / "bare-busy.log")
        bare_busy = Case("(d) bare Bolt app, (c)'s steps running", bare_latencies)
        bare_busy.note = load_note(scripts, served_before, started)
        if any(script.exhausted for script in scripts):
            raise AssertionError("a planning step ran out of turns; raise --turns")
        # The steps would run for minutes more; SIGKILL takes Claude Code's processes too.
        await world.stop_app(signal.SIGKILL)
    return idle, busy, bare_busy


def prepare_busy_steps(world: World, tasks: int, turns: int) -> dict[str, Script]:
    """Set `world` up for `tasks` planning steps of `turns` tool calls each: their scripts
    by the reference that starts them (see `start_busy_steps`)."""
    world.config["concurrency"] = {"planning": tasks, "execution": 2}
    world.config["limits"] = {
        "planning_timeout_s": 1800,
        "execution_timeout_s": 1800,
        "task_budget_usd": 10_000.0,  # long scripted steps add up tokens, not money
        "daily_budget_usd": 100_000.0,
    }
    steps: dict[str, Script] = {}
    for ref in (f"SHOP-{101 + index}" for index in range(tasks)):
        seed_sentry_issue(world, ref)
        steps[ref] = script_busy_planning(world, ref, turns)
    return steps


async def start_busy_steps(world: World, steps: dict[str, Script]) -> None:
    """Start the steps of `prepare_busy_steps` and wait until every one is past the CLI's
    start-up and calling tools."""
    for ref in steps:
        await world.slack.slash_command(ref)
    await world.slack.wait_for(
        lambda: all(script.served >= 3 for script in steps.values()),
        timeout=300,
        what="the steps",
    )


def load_note(scripts: list[Script], served_before: int, started: float) -> str:
    """How busy the planning steps were since `started`."""
    served = sum(script.served for script in scripts) - served_before
    elapsed = time.monotonic() - started
    running = sum(not script.exhausted for script in scripts)
    return f"{running} planning steps running, {served} model turns in {elapsed:.1f} s"


def report(cases: list[Case]) -> str:
    baseline = cases[0]
    lines = [
        f"{'case':<40} {'n':>4} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}"
        f" {'p50 ×':>6} {'p95 ×':>6} {'max ×':>6}",
    ]
    for case in cases:
        p50, p95, top = case.percentile(50), case.percentile(95), max(case.latencies_s)
        lines.append(
            f"{case.name:<40} {len(case.latencies_s):>4} {p50 * 1000:>7.1f} {p95 * 1000:>7.1f}"
            f" {top * 1000:>7.1f} {p50 / baseline.percentile(50):>6.2f}"
            f" {p95 / baseline.percentile(95):>6.2f} {top / max(baseline.latencies_s):>6.2f}"
        )
    lines += [f"{case.name}: {case.note}" for case in cases if case.note]
    lines.append("× is the ratio to (a) at the same percentile (max: to (a)'s max).")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="fixbot-bench-") as tmp:
        root = Path(tmp)
        (root / "world").mkdir()
        bare = Case(
            "(a) bare Bolt app", await bare_app_latencies(args.n, args.warmup, root / "bare.log")
        )
        idle, busy, bare_busy = await fixbot_cases(
            args.n, args.warmup, args.tasks, args.turns, root / "world"
        )
    print(report([bare, idle, busy, bare_busy]))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="commands measured per case")
    parser.add_argument("--warmup", type=int, default=10, help="commands not counted")
    parser.add_argument("--tasks", type=int, default=3, help="planning steps in case (c)")
    parser.add_argument("--turns", type=int, default=400, help="tool-call turns per step")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

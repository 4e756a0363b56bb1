"""The core loop end to end, timed: /fix → plan → Approve → verified fix → pull request.

    .venv/bin/python benchmarks/happy_path.py [--runs 3]

Each run builds a fresh world (LocalSlack, ScriptedModel, FakeSentry, FakeGitHub, a real
git repository), starts the real Fixbot (`python app.py`) and plays the happy path of
tests/test_core_loop.py with its scripts: Approve is clicked as soon as the plan appears.
Per run it reports the wall time from /fix to the "Pull request ready" reply (and to the
plan), the time spent inside Claude Code (the sum of agent_runs.duration_s) and its share,
Slack Web API calls by method, and the number of messages in the thread.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from test_core_loop import buttons, script_execution, script_planning  # noqa: E402
from world import CHANNEL, make_world, seed_sentry_issue  # noqa: E402


@dataclass
class Run:
    to_plan_s: float
    to_pull_request_s: float
    claude_code_s: float
    steps: list[tuple[str, float]]
    slack_calls: Counter[str]
    thread_messages: int

    @property
    def claude_code_share(self) -> float:
        return self.claude_code_s / self.to_pull_request_s


async def happy_path(root: Path) -> Run:
    """One run in a fresh world under `root`."""
    async with make_world(root) as world:
        seed_sentry_issue(world)
        script_planning(world)
        script_execution(world)
        await world.start_app()
        slack = world.slack

        started = time.monotonic()
        await slack.slash_command("SHOP-1")
        parent = (await slack.wait_for(lambda: slack.messages(CHANNEL)[:1]))[0]
        thread = lambda: slack.thread(CHANNEL, parent["ts"])  # noqa: E731
        plan = await slack.wait_for(
            lambda: next((m for m in thread() if buttons(m)), None), timeout=60, what="the plan"
        )
        to_plan = time.monotonic() - started
        await slack.click_button(CHANNEL, plan["ts"], "approve", user="UBOB01")
        await slack.wait_for(
            lambda: next((m for m in thread()[1:] if "Pull request ready" in m["text"]), None),
            timeout=90,
            what="the pull request reply",
        )
        to_pull_request = time.monotonic() - started

        await world.stop_app()  # the last progress edits land before Slack is read
        with sqlite3.connect(world.root / "fixbot.db") as db:
            steps = db.execute("select step, duration_s from agent_runs order by id").fetchall()
        if world.model.unexpected:
            raise AssertionError(f"the model saw unexpected requests: {world.model.unexpected}")
        return Run(
            to_plan_s=to_plan,
            to_pull_request_s=to_pull_request,
            claude_code_s=sum(duration for _, duration in steps),
            steps=[(step, duration) for step, duration in steps],
            slack_calls=slack.call_counts(),
            thread_messages=len(thread()),
        )


def report(runs: list[Run]) -> str:
    lines = [
        f"{'run':>3} {'to plan s':>9} {'to PR s':>8} {'Claude Code s':>13} {'share':>6}"
        f" {'thread msgs':>11}  steps"
    ]
    for number, run in enumerate(runs, 1):
        steps = ", ".join(f"{step} {duration:.2f}s" for step, duration in run.steps)
        lines.append(
            f"{number:>3} {run.to_plan_s:>9.2f} {run.to_pull_request_s:>8.2f}"
            f" {run.claude_code_s:>13.2f} {run.claude_code_share:>6.0%}"
            f" {run.thread_messages:>11}  {steps}"
        )
    median = statistics.median
    lines.append(
        f"median: to plan {median(r.to_plan_s for r in runs):.2f} s, "
        f"to PR {median(r.to_pull_request_s for r in runs):.2f} s, "
        f"Claude Code {median(r.claude_code_s for r in runs):.2f} s "
        f"({median(r.claude_code_share for r in runs):.0%})"
    )
    methods = sorted(set().union(*(run.slack_calls for run in runs)))
    lines.append("Slack Web API calls per run, by method:")
    for method in methods:
        counts = " ".join(f"{run.slack_calls[method]:>3}" for run in runs)
        lines.append(f"  {method:<28} {counts}")
    totals = " ".join(f"{sum(run.slack_calls.values()):>3}" for run in runs)
    lines.append(f"  {'total':<28} {totals}")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="fixbot-bench-") as tmp:
            runs.append(await happy_path(Path(tmp)))
    print(report(runs))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="happy paths to run")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

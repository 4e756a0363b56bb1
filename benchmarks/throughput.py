"""N tasks at once, end to end, on SQLite and PostgreSQL, with one replica or several.

    .venv/bin/python benchmarks/throughput.py [--cases sqlite:20 sqlite:50 postgresql:20x2 …]
        [--runs 1] [--concurrency 2 2]

A case is ENGINE:N[xREPLICAS]. Each run builds a fresh world (LocalSlack, ScriptedModel,
FakeSentry, FakeGitHub, real git; PostgreSQL in a throwaway cluster), starts the real
`python app.py` replicas, types /fix for N Sentry issues at once and clicks Approve on
each plan as it appears, until every task has its pull request. It asserts what
tests/test_replicas.py asserts (every task exactly one pull request, every step run once
and well, none taken over from a live replica, no "database is locked"), so a failed
assertion fails `make bench`; the timings are printed figures, never deadlines:

- tasks/min, from the first /fix to the last pull request;
- seconds from /fix to the plan and to the pull request, p50 and p95 over the tasks;
- peak RSS of each bot process (its VmHWM) and of the agents: the largest Claude Code
  process, and the most memory the Claude Code processes held at one time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from postgres import PostgresServer, _cluster  # noqa: E402
from test_pool import claude_processes  # noqa: E402
from test_replicas import (  # noqa: E402
    assert_exactly_once,
    fix_and_approve_all,
    script_execution,
    script_planning,
    seed_issue,
    start_replicas,
)
from world import World, make_world  # noqa: E402

CI_CASES = ["sqlite:20", "postgresql:20x2", "sqlite:50"]
ALL_CASES = [
    f"{engine}:{tasks}" for engine in ("sqlite", "postgresql") for tasks in (1, 5, 20, 50)
] + ["postgresql:50x2"]
SAMPLE_S = 0.5  # how often agents' memory is looked at
NUMBERS = itertools.count(1)  # of the runs' PostgreSQL databases


@dataclass(frozen=True)
class Case:
    engine: str
    tasks: int
    replicas: int

    @classmethod
    def parse(cls, text: str) -> Case:
        engine, _, rest = text.partition(":")
        tasks, _, replicas = rest.partition("x")
        if engine not in ("sqlite", "postgresql"):
            raise argparse.ArgumentTypeError(f"{text}: the engine is sqlite or postgresql")
        return cls(engine, int(tasks), int(replicas or 1))

    def __str__(self) -> str:
        replicas = f" ×{self.replicas} replicas" if self.replicas > 1 else ""
        return f"{self.engine} N={self.tasks}{replicas}"


@dataclass
class Run:
    tasks_per_min: float
    plan_s: list[float]
    pull_request_s: list[float]
    steps_per_replica: dict[int, int]
    bot_peak_mb: float
    agent_peak_mb: float
    agents_at_once_mb: float


class Memory:
    """Samples the Claude Code processes under each replica while the run goes on."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.agent_peak_kb = 0
        self.agents_at_once_kb = 0

    async def sample(self) -> None:
        while True:
            pids = [
                pid
                for process in list(self.world.processes.values())
                for pid in claude_processes(process.pid)
            ]
            self.agents_at_once_kb = max(
                self.agents_at_once_kb, sum(_status_kb(pid, "VmRSS") for pid in pids)
            )
            self.agent_peak_kb = max([self.agent_peak_kb, *(_status_kb(p, "VmHWM") for p in pids)])
            await asyncio.sleep(SAMPLE_S)

    def bot_peak_kb(self) -> int:
        return max(_status_kb(p.pid, "VmHWM") for p in self.world.processes.values())


def _status_kb(pid: int, field: str) -> int:
    """A memory figure of /proc/PID/status in kB; 0 for a process that has gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    line = next((line for line in lines if line.startswith(f"{field}:")), f"{field}: 0 kB")
    return int(line.split()[1])


async def run_case(
    case: Case, root: Path, postgres: PostgresServer | None, concurrency: dict[str, int]
) -> Run:
    async with make_world(root) as world:
        if postgres is not None:
            world.env["DATABASE_URL"] = postgres.create_database(f"bench_{next(NUMBERS)}")
        world.config["concurrency"] = concurrency
        refs = [f"SHOP-{n}" for n in range(1, case.tasks + 1)]
        for ref in refs:
            seed_issue(world, ref)
            script_planning(world, ref)
            script_execution(world, ref)
        await start_replicas(world, case.replicas)
        memory = Memory(world)
        sampling = asyncio.create_task(memory.sample())
        started = time.monotonic()
        try:
            progress = await fix_and_approve_all(world, refs)
            elapsed = time.monotonic() - started
            bot_peak_kb = memory.bot_peak_kb()
        finally:
            sampling.cancel()
        await world.stop_app()  # the last writes land before the database is read
        run = Run(
            tasks_per_min=case.tasks / elapsed * 60,
            plan_s=sorted(progress.plan_s.values()),
            pull_request_s=sorted(progress.pull_request_s.values()),
            steps_per_replica={r: world.app_log(r).count("step started") for r in world.log_paths},
            bot_peak_mb=bot_peak_kb / 1024,
            agent_peak_mb=memory.agent_peak_kb / 1024,
            agents_at_once_mb=memory.agents_at_once_kb / 1024,
        )
        print(row(run), flush=True)  # the figures, also of a run that fails its assertions
        await assert_exactly_once(world, refs)
        steps = run.steps_per_replica
        assert all(steps.values()), f"a replica did no work: {steps}"
        return run


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile: p50 of 1 value is that value."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(share * len(ordered)) - 1))]


def header(case: Case) -> str:
    return (
        f"{case}: tasks/min | plan p50 p95 s | PR p50 p95 s | bot peak MB | "
        "agent peak MB | agents at once MB | steps per replica"
    )


def row(run: Run) -> str:
    return (
        f"  {run.tasks_per_min:6.1f} | {percentile(run.plan_s, 0.5):6.1f} "
        f"{percentile(run.plan_s, 0.95):6.1f} | {percentile(run.pull_request_s, 0.5):6.1f} "
        f"{percentile(run.pull_request_s, 0.95):6.1f} | {run.bot_peak_mb:6.0f} | "
        f"{run.agent_peak_mb:6.0f} | {run.agents_at_once_mb:6.0f} | {run.steps_per_replica}"
    )


def summary(runs: list[Run]) -> str:
    rates = [run.tasks_per_min for run in runs]
    return (
        f"  tasks/min min / median / max: {min(rates):.1f} / "
        f"{statistics.median(rates):.1f} / {max(rates):.1f}; failures 0, duplicate pull "
        "requests 0, steps taken over 0 (asserted)"
    )


async def main(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        postgres = None
        if any(case.engine == "postgresql" for case in args.cases):
            postgres = stack.enter_context(_cluster())
        for case in args.cases:
            print(header(case), flush=True)
            runs = []
            for _ in range(args.runs):
                with tempfile.TemporaryDirectory(prefix="fixbot-bench-") as tmp:
                    server = postgres if case.engine == "postgresql" else None
                    runs.append(await run_case(case, Path(tmp), server, args.concurrency))
            print(summary(runs), flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases",
        nargs="+",
        default=CI_CASES,
        help=f"ENGINE:N[xREPLICAS] (default, CI's: {' '.join(CI_CASES)}; 'all': "
        f"{' '.join(ALL_CASES)})",
    )
    parser.add_argument("--runs", type=int, default=1, help="runs of each case")
    parser.add_argument(
        "--concurrency",
        nargs=2,
        type=int,
        default=[2, 2],
        metavar=("PLANNING", "EXECUTION"),
        help="steps at once per replica",
    )
    args = parser.parse_args()
    cases = ALL_CASES if args.cases == ["all"] else args.cases
    args.cases = [Case.parse(case) for case in cases]
    planning, execution = args.concurrency
    args.concurrency = {"planning": planning, "execution": execution}
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

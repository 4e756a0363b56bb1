"""What the sandbox costs: one agent step and one test run, sandboxed and not, same run.

An agent step here is the real Claude Code CLI (through agents/runner.py) answering a
scripted model for three turns: a Read, a Bash command (the repo's test command) and a
final text. A test run is Fixbot's own `run_command` of `python -m pytest -q` on a small
repository with two tests; an empty run is `run_command("true")`, the sandbox's fixed cost
alone (its probe that bubblewrap works, then the namespaces and mounts). Cases alternate
(sandboxed, off, sandboxed, off, …) so that whatever else loads the machine falls on both.

    .venv/bin/python benchmarks/sandbox_cost.py [--steps 5] [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fakes.anthropic import ScriptedModel, text, tool  # noqa: E402

from agents.runner import AgentEnvironment, AgentStep, run_agent_step  # noqa: E402
from repos.sandbox import Sandbox  # noqa: E402
from repos.verify import run_command  # noqa: E402

TEST_COMMAND = f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider"
CASES = {"sandboxed": Sandbox(), "off": Sandbox(mode="off")}


def make_repo(root: Path) -> Path:
    repo = root / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (repo / "conftest.py").write_text("")
    (repo / "tests" / "test_calc.py").write_text(
        "from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n\n\n"
        "def test_add_negative():\n    assert add(-1, 1) == 0\n"
    )
    return repo


async def agent_step(model: ScriptedModel, root: Path, repo: Path, sandbox: Sandbox) -> float:
    task = f"TASK-{time.monotonic_ns()}"
    model.script(
        [
            [tool("Read", {"file_path": str(repo / "calc.py")})],
            [tool("Bash", {"command": TEST_COMMAND, "description": "Run the tests"})],
            [text("Done.")],
        ],
        match=task,
    )

    async def allow(name: str, tool_input: dict[str, object]) -> str | None:
        return None

    env = AgentEnvironment(
        home=root / "home", anthropic_api_key="sk-ant-bench", base_url=model.base_url,
        sandbox=sandbox,
    )  # fmt: skip
    step = AgentStep(name="execution", prompt=f"Do {task}.", cwd=repo, can_use_tool=allow)
    started = time.perf_counter()
    result = await run_agent_step(step, env)
    elapsed = time.perf_counter() - started
    assert result.outcome == "success" and model.unexpected == [], result
    return elapsed


async def test_run(repo: Path, sandbox: Sandbox, command: str = TEST_COMMAND) -> float:
    started = time.perf_counter()
    result = await run_command(command, repo, timeout=120, sandbox=sandbox)
    elapsed = time.perf_counter() - started
    assert result.passed, result.output
    return elapsed


def summary(name: str, times: dict[str, list[float]]) -> None:
    medians = {case: statistics.median(values) for case, values in times.items()}
    print(f"\n{name}")
    print("| case | n | median s | mean s | min s | max s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for case, values in times.items():
        print(
            f"| {case} | {len(values)} | {medians[case]:.3f} | {statistics.mean(values):.3f} "
            f"| {min(values):.3f} | {max(values):.3f} |"
        )
    added = medians["sandboxed"] - medians["off"]
    print(f"added by the sandbox (median): {added:+.3f} s ({added / medians['off']:+.0%})")


async def main(steps: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="fixbot-bench-") as folder:
        root = Path(folder)
        repo = make_repo(root)
        empty_times: dict[str, list[float]] = {case: [] for case in CASES}
        for _ in range(runs):
            for case, sandbox in CASES.items():
                empty_times[case].append(await test_run(repo, sandbox, "true"))
        runs_times: dict[str, list[float]] = {case: [] for case in CASES}
        await test_run(repo, CASES["sandboxed"])  # warm-up: page cache, bytecode
        for _ in range(runs):
            for case, sandbox in CASES.items():
                runs_times[case].append(await test_run(repo, sandbox))
        step_times: dict[str, list[float]] = {case: [] for case in CASES}
        async with ScriptedModel() as model:
            await agent_step(model, root, repo, CASES["sandboxed"])  # warm-up
            for _ in range(steps):
                for case, sandbox in CASES.items():
                    step_times[case].append(await agent_step(model, root, repo, sandbox))
        summary("Empty run (true)", empty_times)
        summary("Test run (python -m pytest -q, 2 tests)", runs_times)
        summary("Agent step (Claude Code CLI, 3 turns: Read, Bash test command, text)", step_times)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.steps, arguments.runs))

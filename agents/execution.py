"""The execution step: with the approved plan, write the failing test, fix, run the suite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.permissions import execution_gate
from agents.prompts import UNTRUSTED_NOTE, fence, reference
from agents.runner import AgentStep
from repos.config import RepoConfig
from repos.environment import RepoEnvironment

SYSTEM_PROMPT = f"""You are Fixbot's execution agent. You implement an approved fix plan,
test first, in the repository checkout in your working directory. Use the tdd-workflow
and self-review skills. You may read and edit files here and run only the repository's
test and lint commands. Never commit or push: Fixbot checks your work and does that.
{UNTRUSTED_NOTE}"""


def execution_step(
    worktree: Path,
    *,
    ref: str,
    repo: RepoConfig,
    plan_markdown: str,
    plugins: tuple[Path, ...],
    mcp_servers: dict[str, Any],
    budget_usd: float | None,
    environment: RepoEnvironment | None = None,
) -> AgentStep:
    """The AgentStep that implements `plan_markdown` in `worktree` (in the repository's
    `environment`, for its test runs).

    Only the approved plan reaches this prompt: thread replies become input to a revised
    plan, which needs approval again, never notes for the executor.
    """
    lint = f" and lint with `{repo.lint_command}`" if repo.lint_command else ""
    prompt = (
        f"Implement the approved plan for {reference(ref)}.\n\n"
        f"{fence('approved-plan', plan_markdown)}\n\n"
        f"1. Write the failing test first and run it with `{repo.test_command}` to see it fail.\n"
        f"2. Make the smallest change that fixes the bug.\n"
        f"3. Run the whole suite with `{repo.test_command}`{lint}; everything must pass.\n"
        "4. Review your diff (git diff) and finish with a one-paragraph summary."
    )
    mcp_tools = tuple(f"mcp__{name}__" for name in mcp_servers)
    return AgentStep(
        name="execution",
        prompt=prompt,
        cwd=worktree,
        system_prompt=SYSTEM_PROMPT,
        can_use_tool=execution_gate(worktree, [repo.test_command, repo.lint_command], mcp_tools),
        mcp_servers=mcp_servers,
        plugins=plugins,
        max_budget_usd=budget_usd,
        env=environment.variables if environment else {},
        readable=(environment.path,) if environment else (),
    )

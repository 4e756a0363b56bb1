"""The planning step: read the error and the code, write PLAN.md, return the plan as data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agents.permissions import PLAN_FILE, planning_gate
from agents.plan import Plan
from agents.prompts import UNTRUSTED_NOTE, fence, reference
from agents.runner import AgentStep, StepResult
from agents.search import GREP_TOOL, LIST_TOOL, search_server
from agents.search import SERVER as SEARCH_SERVER
from agents.search import TOOLS as SEARCH_TOOLS
from repos.errors import StepFailed

SYSTEM_PROMPT = f"""You are Fixbot's planning agent. You find the root cause of a production
error in the repository in your working directory and write a test-first fix plan.
You may Read files, search them with {GREP_TOOL} and {LIST_TOOL} (load them with
ToolSearch if needed), and write only {PLAN_FILE}; you cannot run commands or change code.
Use the skills discovery, root-cause-analysis and test-first-plan.
{UNTRUSTED_NOTE}"""

PLAN_SECTIONS = "Summary, Root cause, Failing test, Change, Risk, Out of scope"


@dataclass(frozen=True)
class PlanningInput:
    ref: str
    repo: str
    test_command: str
    context: str  # the rendered error report (untrusted)
    feedback: tuple[str, ...] = ()  # reviewers' replies asking for changes (untrusted)
    previous_plan: str | None = None


def planning_step(
    worktree: Path,
    given: PlanningInput,
    *,
    plugins: tuple[Path, ...],
    mcp_servers: dict[str, Any],
    budget_usd: float | None,
    resume_session_id: str | None = None,
) -> AgentStep:
    """The AgentStep for planning (or revising) a fix in `worktree`."""
    if given.feedback:
        prompt = (
            f"Revise the fix plan for {reference(given.ref)} in {given.repo} using the "
            "plan-changes skill. "
            f"Reviewers answered in Slack:\n\n"
            + "\n\n".join(fence("slack-thread", text) for text in given.feedback)
            + f"\n\nRewrite {PLAN_FILE} and return the revised plan."
        )
        if given.previous_plan and resume_session_id is None:
            prompt += "\n\nThe previous plan:\n\n" + fence("previous-plan", given.previous_plan)
    else:
        prompt = (
            f"Plan a fix for {reference(given.ref)} in the repository {given.repo} (your working "
            f"directory). Its tests run with `{given.test_command}`.\n\n"
            f"{fence('error-report', given.context)}\n\n"
            f"Write {PLAN_FILE} with the sections {PLAN_SECTIONS}; cite file:line evidence. "
            "Then return the same plan as structured output."
        )
    servers = {**mcp_servers, SEARCH_SERVER: search_server(worktree)}
    mcp_tools = tuple(f"mcp__{name}__" for name in servers)
    return AgentStep(
        name="planning",
        prompt=prompt,
        cwd=worktree,
        system_prompt=SYSTEM_PROMPT,
        allowed_tools=SEARCH_TOOLS,  # confined to the worktree by their own checks
        can_use_tool=planning_gate(worktree, mcp_tools),
        mcp_servers=servers,
        plugins=plugins,
        output_schema=Plan.model_json_schema(),
        max_budget_usd=budget_usd,
        resume_session_id=resume_session_id,
    )


def read_plan(worktree: Path, result: StepResult) -> tuple[Plan, str]:
    """The plan as data and as PLAN.md's text; StepFailed when the agent left neither."""
    plan_path = worktree / PLAN_FILE
    # A link is never followed: it could point anywhere (the repository's own content).
    is_plan = plan_path.is_file() and not plan_path.is_symlink()
    markdown = plan_path.read_text() if is_plan else None
    plan: Plan | None = None
    if result.structured_output is not None:
        try:
            plan = Plan.model_validate(result.structured_output)
        except ValidationError as error:
            raise StepFailed(f"The planning agent's plan was malformed: {error}") from None
    if plan is None:
        raise StepFailed("The planning agent finished without returning a plan.")
    if markdown is None:
        markdown = render_plan(plan)
        plan_path.unlink(missing_ok=True)
        plan_path.write_text(markdown)
    return plan, markdown


def render_plan(plan: Plan) -> str:
    """PLAN.md from structured data (when the agent returned data but wrote no file)."""
    evidence = "".join(f"\n- {line}" for line in plan.evidence)
    return (
        f"# Plan\n\n## Summary\n\n{plan.summary}\n\n## Root cause\n\n{plan.root_cause}\n"
        f"{evidence}\n\n## Failing test\n\n{plan.test_plan}\n\n## Change\n\n{plan.change}\n\n"
        f"## Risk\n\n{plan.risk}\n\n## Out of scope\n\n{plan.out_of_scope or 'Nothing noted.'}\n"
    )

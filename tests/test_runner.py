"""The agent runner, driving the real Claude Code CLI against the scripted model."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fakes.anthropic import Failure, ScriptedModel, overloaded, structured, text, tool

from agents.runner import (
    AgentEnvironment,
    AgentEvent,
    AgentPermanentError,
    AgentStep,
    AgentTransientError,
    agent_env,
    run_agent_step,
    summarize_tool_use,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def model() -> AsyncIterator[ScriptedModel]:
    async with ScriptedModel() as scripted:
        yield scripted


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    return path


@pytest.fixture
def environment(tmp_path: Path, model: ScriptedModel) -> AgentEnvironment:
    # One retry keeps a persistent overload under two seconds (the CLI's default is ten,
    # with exponential backoff up to ~40 s, over three minutes in all).
    return AgentEnvironment(
        home=tmp_path / "home",
        anthropic_api_key="sk-ant-test",
        base_url=model.base_url,
        extra={"CLAUDE_CODE_MAX_RETRIES": "1"},
    )


async def allow_everything(name: str, tool_input: dict[str, Any]) -> str | None:
    return None


def tool_result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    return content if isinstance(content, str) else json.dumps(content)


async def test_a_step_writes_a_file_and_reports_its_cost(
    model: ScriptedModel, environment: AgentEnvironment, repo: Path
) -> None:
    model.script(
        [
            [
                text("I'll write it."),
                tool("Write", {"file_path": str(repo / "hello.txt"), "content": "hi\n"}),
            ],
            [text("Wrote hello.txt.")],
        ],
        match="TASK-write",
    )
    events: list[AgentEvent] = []

    async def record(event: AgentEvent) -> None:
        events.append(event)

    step = AgentStep(
        name="execution",
        prompt="Do TASK-write.",
        cwd=repo,
        can_use_tool=allow_everything,
    )
    result = await run_agent_step(step, environment, on_event=record)

    assert (repo / "hello.txt").read_text() == "hi\n"
    assert result.outcome == "success"
    assert result.text == "Wrote hello.txt."
    assert result.session_id
    assert result.cost_usd > 0
    assert result.turns == 2
    assert result.input_tokens > 0 and result.output_tokens > 0
    assert [e.summary for e in events if e.kind == "tool"] == ["Writing hello.txt"]
    assert model.unexpected == []


async def test_a_refused_tool_call_is_not_run_and_the_model_reads_why(
    model: ScriptedModel, environment: AgentEnvironment, repo: Path
) -> None:
    model.script(
        [
            [tool("Write", {"file_path": str(repo / "shop.py"), "content": "oops"})],
            [tool("Write", {"file_path": str(repo / "PLAN.md"), "content": "# Plan\n"})],
            [text("Plan written.")],
        ],
        match="planning",
    )

    async def only_the_plan(name: str, tool_input: dict[str, Any]) -> str | None:
        if name == "Write" and Path(tool_input["file_path"]).name == "PLAN.md":
            return None
        return "Planning may only write PLAN.md."

    step = AgentStep(
        name="planning", prompt="Make a plan (planning).", cwd=repo, can_use_tool=only_the_plan
    )
    result = await run_agent_step(step, environment)

    assert not (repo / "shop.py").exists()
    assert (repo / "PLAN.md").read_text() == "# Plan\n"
    refusal, allowed = model.tool_results()
    assert refusal.get("is_error") is True
    assert "Planning may only write PLAN.md." in tool_result_text(refusal)
    assert not allowed.get("is_error")
    assert result.outcome == "success"
    assert model.unexpected == []


async def test_structured_output_comes_back_as_a_dict(
    model: ScriptedModel, environment: AgentEnvironment, repo: Path
) -> None:
    plan = {"summary": "Round prices half-up", "files": ["shop/pricing.py"]}
    model.script([[structured(plan)]], match="TASK-structured")
    schema = {
        "type": "object",
        "properties": {
            "summary": {"type": "string"},
            "files": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["summary", "files"],
    }
    step = AgentStep(
        name="planning", prompt="Plan TASK-structured.", cwd=repo, output_schema=schema
    )

    result = await run_agent_step(step, environment)

    assert result.outcome == "success"
    assert result.structured_output == plan
    assert model.unexpected == []


@pytest.mark.parametrize(
    ("limits", "outcome"),
    [({"max_turns": 1}, "error_max_turns"), ({"max_budget_usd": 0.01}, "error_max_budget")],
)
async def test_a_step_that_hits_its_limit_says_which(
    model: ScriptedModel,
    environment: AgentEnvironment,
    repo: Path,
    limits: dict[str, Any],
    outcome: str,
) -> None:
    # Each scripted request costs about $0.05 at the CLI's default model's prices.
    model.script(
        [[tool("Write", {"file_path": str(repo / "a.txt"), "content": "a"})], [text("Done.")]],
        match="TASK-limits",
    )
    step = AgentStep(
        name="execution",
        prompt="Do TASK-limits.",
        cwd=repo,
        can_use_tool=allow_everything,
        **limits,
    )

    result = await run_agent_step(step, environment)

    assert result.outcome == outcome
    assert result.error
    assert model.unexpected == []


async def test_a_brief_overload_is_retried_by_claude_code(
    model: ScriptedModel, environment: AgentEnvironment, repo: Path
) -> None:
    model.script([overloaded(), [text("Done despite the hiccup.")]], match="TASK-blip")

    result = await run_agent_step(
        AgentStep(name="execution", prompt="Do TASK-blip.", cwd=repo), environment
    )

    assert result.text == "Done despite the hiccup."
    assert model.unexpected == []


async def test_a_persistent_overload_is_a_transient_error(
    model: ScriptedModel, environment: AgentEnvironment, repo: Path
) -> None:
    script = model.script([overloaded(times=None)], match="TASK-overloaded")

    with pytest.raises(AgentTransientError, match="529"):
        await run_agent_step(
            AgentStep(name="execution", prompt="Do TASK-overloaded.", cwd=repo), environment
        )

    assert script.served == 2  # the request and CLAUDE_CODE_MAX_RETRIES=1 retry
    assert model.unexpected == []


async def test_a_rejected_request_is_a_permanent_error_tried_once(
    model: ScriptedModel, environment: AgentEnvironment, repo: Path
) -> None:
    refusal = Failure(400, "invalid_request_error", "prompt is too long", None, None)
    script = model.script([refusal], match="TASK-refused")

    with pytest.raises(AgentPermanentError, match="The model API refused"):
        await run_agent_step(
            AgentStep(name="execution", prompt="Do TASK-refused.", cwd=repo), environment
        )

    assert script.served == 1  # unlike a 529, Claude Code does not try it again
    assert model.unexpected == []


async def test_the_agents_shell_does_not_see_fixbots_secrets(
    model: ScriptedModel,
    environment: AgentEnvironment,
    repo: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-secret")
    model.script(
        [[tool("Bash", {"command": "env", "description": "Show the environment"})], [text("ok")]],
        match="TASK-env",
    )

    await run_agent_step(
        AgentStep(name="execution", prompt="Do TASK-env.", cwd=repo, can_use_tool=allow_everything),
        environment,
    )

    [result] = model.tool_results()
    shown = tool_result_text(result)
    assert "PATH=" in shown  # the command did run
    assert "ghp_secret" not in shown
    assert "xoxb-secret" not in shown
    assert f"HOME={environment.home / repo.name}\n" in shown  # the task's own HOME
    assert model.unexpected == []


async def test_cancelling_a_step_leaves_no_process_behind(
    model: ScriptedModel, environment: AgentEnvironment, repo: Path
) -> None:
    # Claude Code refuses a bare `sleep 30`, so the long command is a Python one.
    marker = f"fixbot-cancel-{uuid.uuid4().hex[:8]}"
    command = f"python3 -c 'import time; time.sleep(30)' {marker}"
    model.script([[tool("Bash", {"command": command, "description": "Wait"})]], match="TASK-cancel")
    asked = asyncio.Event()

    async def allow_and_note(name: str, tool_input: dict[str, Any]) -> str | None:
        asked.set()
        return None

    step = AgentStep(
        name="execution", prompt="Do TASK-cancel.", cwd=repo, can_use_tool=allow_and_note
    )
    running = asyncio.create_task(run_agent_step(step, environment))
    async with asyncio.timeout(60):
        await asked.wait()
    # The tool's shell starts (slowly, on a busy machine).
    assert await _started(marker, within_s=30), "the tool's shell should be running"

    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    left_behind = await _left_behind(marker, within_s=30)
    assert left_behind == []


def test_the_cli_environment_blanks_everything_not_passed_through(tmp_path: Path) -> None:
    environment = AgentEnvironment(
        home=tmp_path, anthropic_api_key="sk-ant-x", base_url="http://127.0.0.1:1"
    )
    inherited = {
        "PATH": "/usr/bin",
        "LC_ALL": "C.UTF-8",
        "GITHUB_TOKEN": "ghp_x",
        "DATABASE_URL": "postgresql://u:p@db/fixbot",
        "CLAUDE_CODE_OAUTH_TOKEN": "leftover",
    }

    variables = agent_env(environment, inherited)

    assert "PATH" not in variables and "LC_ALL" not in variables  # inherited as they are
    assert variables["GITHUB_TOKEN"] == "" and variables["DATABASE_URL"] == ""
    assert variables["CLAUDE_CODE_OAUTH_TOKEN"] == ""
    assert variables["ANTHROPIC_API_KEY"] == "sk-ant-x"
    assert variables["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:1"
    assert variables["HOME"] == str(tmp_path)


@pytest.mark.parametrize(
    ("name", "tool_input", "summary"),
    [
        ("Read", {"file_path": "/w/repo/shop/pricing.py"}, "Reading shop/pricing.py"),
        ("Edit", {"file_path": "/w/repo/shop/pricing.py"}, "Editing shop/pricing.py"),
        ("Write", {"file_path": "/elsewhere/x.py"}, "Writing /elsewhere/x.py"),
        ("Bash", {"command": "python -m pytest -q"}, "Running python -m pytest -q"),
        ("Grep", {"pattern": "def total"}, "Searching for 'def total'"),
        ("Glob", {"pattern": "**/*.py"}, "Listing **/*.py"),
        ("mcp__sentry__get_issue", {}, "Using sentry get_issue"),
    ],
)
def test_tool_calls_read_as_status_lines(
    name: str, tool_input: dict[str, Any], summary: str
) -> None:
    assert summarize_tool_use(name, tool_input, Path("/w/repo")) == summary


async def _left_behind(marker: str, within_s: float) -> list[str]:
    """Our child processes and the tool's command still running after `within_s`."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        # The app launcher (tests/launcher.py) is this process's child for the session.
        ours = [line for line in _descendants(os.getpid()) if "tests/launcher.py" not in line]
        left = ours + _processes_with(marker)
        if not left or asyncio.get_running_loop().time() > deadline:
            return left
        await asyncio.sleep(0.1)


async def _started(marker: str, within_s: float) -> list[str]:
    """The command lines holding `marker`, once one runs (empty after `within_s`)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        running = _processes_with(marker)
        if running or asyncio.get_running_loop().time() > deadline:
            return running
        await asyncio.sleep(0.05)


def _processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process we can see."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        found.append((int(entry.name), parent, cmdline))
    return found


def _descendants(root: int) -> list[str]:
    processes = _processes()
    family, found = {root}, []
    grew = True
    while grew:
        grew = False
        for pid, parent, cmdline in processes:
            if parent in family and pid not in family:
                family.add(pid)
                found.append(cmdline)
                grew = True
    return found


def _processes_with(marker: str) -> list[str]:
    return [cmdline for _, _, cmdline in _processes() if marker in cmdline]

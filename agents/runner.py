"""Run one Claude Code agent step: the one place that touches claude-agent-sdk.

A step (planning, execution) describes what to run as an `AgentStep`; `AgentEnvironment`
says how to start Claude Code. `run_agent_step` starts the CLI, streams progress as
`AgentEvent`s, and returns a `StepResult`, or raises `AgentTransientError` (worth
retrying: the API overloaded or rate limited, the network, the CLI crashing) or
`AgentPermanentError` (retrying will not help: bad credentials, no CLI, bad request).

The CLI's environment: the SDK always starts it with the whole of `os.environ` merged
under `options.env` (see claude_agent_sdk/_internal/transport/subprocess_cli.py), and the
agent's Bash sees all of it. So `agent_env` overrides every inherited variable that is not
on the allowlist (repos/process.py, the one test runs get too) with an empty string, which
is how Fixbot's secrets (Slack, GitHub, Sentry, Jira tokens, the database URL) stay out of
the agent's reach.

The CLI runs in an OS sandbox (repos/sandbox.py): its own PID and network namespaces, a
read-only system, and writable only the step's worktree and its HOME; a socat bridge
reaches the Anthropic API and nothing else. Every command its tools run is its child, so
inside the same sandbox. The SDK starts `cli_path` with arguments, so the CLI is started
through a small launcher script that execs bubblewrap.

Claude Code retries 429, 529 and 5xx answers itself: `CLAUDE_CODE_MAX_RETRIES` times
(default 10) with exponential backoff up to about 40 s, so an `AgentTransientError` for an
overloaded API comes after about three minutes of trying. `AgentEnvironment.extra` can
lower that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    ClaudeSDKError,
    CLIConnectionError,
    CLINotFoundError,
    PermissionResultAllow,
    PermissionResultDeny,
    ResultMessage,
    SystemMessage,
    TextBlock,
    ToolPermissionContext,
    ToolUseBlock,
)
from claude_agent_sdk.types import PermissionResult, SdkPluginConfig, SessionStore

from repos.errors import FixbotError, Transient
from repos.process import kill_child, passes_through
from repos.sandbox import Endpoint, Sandbox

__all__ = [
    "AgentEnvironment",
    "AgentError",
    "AgentEvent",
    "AgentPermanentError",
    "AgentStep",
    "AgentTransientError",
    "StepResult",
    "ToolGate",
    "agent_env",
    "claude_cli",
    "run_agent_step",
    "summarize_tool_use",
]

log = logging.getLogger("fixbot.agents")

ToolGate = Callable[[str, dict[str, Any]], Awaitable[str | None]]
"""Decides a tool call the CLI asks about: None allows it, a string refuses it (the model
reads the string as the tool's result)."""

Outcome = Literal["success", "error_max_turns", "error_max_budget", "error", "interrupted"]

# HTTP statuses of the Anthropic API worth another try later.
_TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
_INTERRUPT_TIMEOUT_S = 3.0
_STDERR_LINES_KEPT = 40
ANTHROPIC_API = "https://api.anthropic.com"


@dataclass(frozen=True)
class AgentStep:
    """What to run: one Claude Code conversation in one working directory."""

    name: str  # "planning" | "execution"
    prompt: str
    cwd: Path
    system_prompt: str | None = None  # appended to Claude Code's own system prompt
    allowed_tools: Sequence[str] = ()  # run without asking `can_use_tool`
    can_use_tool: ToolGate | None = None  # asked about every other tool call
    mcp_servers: Mapping[str, Any] = field(default_factory=dict)
    plugins: Sequence[Path] = ()  # local Claude Code plugin directories (skills)
    output_schema: dict[str, Any] | None = None  # JSON schema of the structured answer
    max_budget_usd: float | None = None
    max_turns: int | None = None
    resume_session_id: str | None = None
    model: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)  # the repo's environment, if any
    readable: Sequence[Path] = ()  # folders the sandbox shows read-only (that environment)


class TranscriptStore(SessionStore, Protocol):
    """A `SessionStore` that batches appends; `flush` writes them, at the end of a step."""

    async def flush(self) -> None: ...


@dataclass(frozen=True)
class AgentEnvironment:
    """How to start Claude Code; built once from settings."""

    home: Path  # under it, each task's private HOME for the CLI (sessions in HOME/.claude)
    cli_path: str | None = None  # None: the CLI bundled with claude-agent-sdk
    anthropic_api_key: str | None = field(default=None, repr=False)
    oauth_token: str | None = field(default=None, repr=False)
    base_url: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)  # e.g. CLAUDE_CODE_MAX_RETRIES
    # Where transcripts are mirrored and resumed from, so any replica can resume a session.
    session_store: TranscriptStore | None = field(default=None, repr=False)
    sandbox: Sandbox = field(default_factory=Sandbox)  # what confines the CLI and its tools


@dataclass(frozen=True)
class AgentEvent:
    """Progress of a running step, fit for a status line."""

    kind: Literal["tool", "text"]
    summary: str  # "Reading shop/pricing.py", "Running python -m pytest -q"
    cost_usd: float | None = None  # spend so far, when known (Claude Code tells it at the end)


@dataclass
class StepResult:
    """How a step ended and what it cost."""

    session_id: str
    outcome: Outcome
    cost_usd: float  # the session's total: a resumed session includes its earlier runs
    input_tokens: int  # all input tokens of this run, cached or not
    output_tokens: int
    turns: int
    duration_s: float
    text: str  # the final answer
    structured_output: dict[str, Any] | None = None
    error: str | None = None


class AgentError(FixbotError):
    """Claude Code could not run the step."""

    def __init__(self, message: str, *, session_id: str | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id


class AgentTransientError(AgentError, Transient):
    """Worth retrying later: API overloaded or rate limited, network trouble, CLI crash."""


class AgentPermanentError(AgentError):
    """Retrying will not help: bad credentials, a rejected request, no CLI."""


EventHandler = Callable[[AgentEvent], Awaitable[None]]
SessionHandler = Callable[[str], Awaitable[None]]


async def run_agent_step(
    step: AgentStep,
    env: AgentEnvironment,
    on_event: EventHandler | None = None,
    on_session: SessionHandler | None = None,
) -> StepResult:
    """Run `step` to its end and report how it went.

    `on_session` is awaited once with the session id as soon as Claude Code reports it,
    so a caller can record a running step's session. Cancelling the awaiting task
    interrupts Claude Code and ends its process.
    """
    home = task_home(env, step.cwd)
    (home / ".claude").mkdir(parents=True, exist_ok=True)
    if not env.sandbox.enabled:
        log.warning("the %s agent runs WITHOUT a sandbox (fixbot.yml `sandbox: off`)", step.name)
        return await _run(step, env, home, env.cli_path, on_event, on_session)
    cli = claude_cli(env.cli_path)
    async with env.sandbox.confine(
        writable=[step.cwd, home],
        # A CLI installed outside /usr and Fixbot's Python, the skills, the repo's environment.
        readable=[Path(cli).parent, *step.plugins, *step.readable],
        reach=[Endpoint.parse(env.base_url or ANTHROPIC_API)],
    ) as confinement:
        # Resuming from the session store, the SDK sets CLAUDE_CONFIG_DIR to a folder of
        # its own at start: the launcher binds that too.
        launcher = confinement.launcher([cli], bind_variable=CONFIG_DIR)
        return await _run(step, env, home, str(launcher), on_event, on_session)


async def _run(
    step: AgentStep,
    env: AgentEnvironment,
    home: Path,
    cli_path: str | None,
    on_event: EventHandler | None,
    on_session: SessionHandler | None,
) -> StepResult:
    stderr_tail: deque[str] = deque(maxlen=_STDERR_LINES_KEPT)
    options = _options(step, env, home, cli_path, stderr_tail.append)
    started = time.monotonic()
    client = ClaudeSDKClient(options)
    result: ResultMessage | None = None
    last_text = ""
    session_reported = False
    try:
        await client.connect()
        await client.query(step.prompt)
        async for message in client.receive_response():
            if isinstance(message, SystemMessage) and message.subtype == "init":
                session_id = message.data.get("session_id")
                if on_session is not None and session_id and not session_reported:
                    session_reported = True
                    await on_session(str(session_id))
            elif isinstance(message, AssistantMessage):
                last_text = await _report(message, step.cwd, on_event) or last_text
            elif isinstance(message, ResultMessage):
                result = message
    except asyncio.CancelledError:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            async with asyncio.timeout(_INTERRUPT_TIMEOUT_S):
                await client.interrupt()
        raise
    except ClaudeSDKError as error:
        raise _translate(error, stderr_tail) from error
    except Exception as error:
        # The SDK raises bare Exceptions for control-protocol failures (a timed-out
        # initialize, an error reply from the CLI); anything more specific is not its own.
        if type(error) is not Exception:
            raise
        raise AgentTransientError(
            _with_stderr(f"Claude Code failed: {error}", stderr_tail)
        ) from error
    finally:
        await _close(client)
        await _flush_transcript(env)
    if result is None:
        raise AgentTransientError(_with_stderr("Claude Code ended without a result.", stderr_tail))
    return _step_result(result, time.monotonic() - started, last_text)


CONFIG_DIR = "CLAUDE_CONFIG_DIR"


def task_home(env: AgentEnvironment, worktree: Path) -> Path:
    """The CLI's HOME for the task in `worktree`: one task never sees another's sessions."""
    return env.home / worktree.name


def claude_cli(configured: str | None) -> str:
    """The CLI claude-agent-sdk would run, links resolved: `configured`, its bundled
    binary, else `claude` on PATH."""
    if configured:
        return os.path.realpath(shutil.which(configured) or configured)
    from claude_agent_sdk._internal.transport.subprocess_cli import SubprocessCLITransport

    found = SubprocessCLITransport(prompt="", options=ClaudeAgentOptions())._find_cli()
    return os.path.realpath(found)


def agent_env(
    env: AgentEnvironment, inherited: Mapping[str, str] | None = None, home: Path | None = None
) -> dict[str, str]:
    """The variables to lay over the inherited environment of the CLI (`options.env`)."""
    inherited = os.environ if inherited is None else inherited
    home = env.home if home is None else home
    variables = {name: "" for name in inherited if not passes_through(name)}
    variables.update(
        {
            "HOME": str(home),
            # Named outright (the CLI's default under HOME) so that the SDK, which reads it
            # from here, finds the transcripts the CLI writes and mirrors them to the store.
            CONFIG_DIR: str(home / ".claude"),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "ANTHROPIC_API_KEY": env.anthropic_api_key or "",
            "CLAUDE_CODE_OAUTH_TOKEN": env.oauth_token or "",
        }
    )
    if env.base_url:
        variables["ANTHROPIC_BASE_URL"] = env.base_url
    if "PATH" not in inherited:
        variables["PATH"] = os.defpath
    variables.update(env.extra)
    return variables


def summarize_tool_use(name: str, tool_input: Mapping[str, Any], cwd: Path) -> str:
    """A short line saying what a tool call does, e.g. "Reading shop/pricing.py"."""

    def path(key: str = "file_path") -> str:
        return _relative(str(tool_input.get(key) or tool_input.get("path") or ""), cwd)

    if name == "Read":
        return f"Reading {path()}"
    if name == "Write":
        return f"Writing {path()}"
    if name in ("Edit", "MultiEdit"):
        return f"Editing {path()}"
    if name == "NotebookEdit":
        return f"Editing {path('notebook_path')}"
    if name == "Bash":
        return f"Running {_shorten(str(tool_input.get('command', '')))}"
    if name == "Grep":
        where = f" in {path('path')}" if tool_input.get("path") else ""
        return f"Searching for {_shorten(str(tool_input.get('pattern', '')))!r}{where}"
    if name == "Glob":
        return f"Listing {_shorten(str(tool_input.get('pattern', '')))}"
    if name == "WebFetch":
        return f"Fetching {_shorten(str(tool_input.get('url', '')))}"
    if name == "WebSearch":
        return f"Searching the web for {_shorten(str(tool_input.get('query', '')))!r}"
    if name in ("Agent", "Task"):
        return f"Delegating: {_shorten(str(tool_input.get('description', '')))}"
    if name == "Skill":
        return f"Using the {tool_input.get('skill', '')} skill"
    if name == "StructuredOutput":
        return "Reporting the result"
    if name.startswith("mcp__"):
        _, server, tool = [*name.split("__", 2), "", ""][:3]
        return f"Using {server} {tool}".strip()
    return f"Using {name}"


# Options


def _options(
    step: AgentStep,
    env: AgentEnvironment,
    home: Path,
    cli_path: str | None,
    on_stderr: Callable[[str], None],
) -> ClaudeAgentOptions:
    system_prompt: Any = {"type": "preset", "preset": "claude_code"}
    if step.system_prompt:
        system_prompt["append"] = step.system_prompt
    plugins: list[SdkPluginConfig] = [
        {"type": "local", "path": str(plugin)} for plugin in step.plugins
    ]
    output_format = (
        {"type": "json_schema", "schema": step.output_schema} if step.output_schema else None
    )
    return ClaudeAgentOptions(
        cwd=step.cwd,
        cli_path=cli_path,
        env={**agent_env(env, home=home), **step.env},
        system_prompt=system_prompt,
        permission_mode="default",
        allowed_tools=list(step.allowed_tools),
        can_use_tool=_permission_callback(step.can_use_tool) if step.can_use_tool else None,
        setting_sources=[],  # no user or project settings: the repo under work is untrusted
        mcp_servers=dict(step.mcp_servers),
        plugins=plugins,
        output_format=output_format,
        max_budget_usd=step.max_budget_usd,
        max_turns=step.max_turns,
        resume=step.resume_session_id,
        session_store=env.session_store,
        # Every transcript line reaches the store as it is written, not at the end of the
        # step: a replica that dies mid-step leaves a session another can resume. The
        # store batches the lines into a write a second (storage/sessions.py).
        session_store_flush="eager",
        model=step.model,
        stderr=on_stderr,
    )


def _permission_callback(
    gate: ToolGate,
) -> Callable[[str, dict[str, Any], ToolPermissionContext], Awaitable[PermissionResult]]:
    async def can_use_tool(
        name: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResult:
        refusal = await gate(name, tool_input)
        if refusal is None:
            return PermissionResultAllow()
        return PermissionResultDeny(message=refusal)

    return can_use_tool


# Messages


async def _report(
    message: AssistantMessage, cwd: Path, on_event: EventHandler | None
) -> str | None:
    """Send the events of one assistant message; return its text, if any."""
    texts: list[str] = []
    for block in message.content:
        event: AgentEvent | None = None
        if isinstance(block, ToolUseBlock):
            event = AgentEvent("tool", summarize_tool_use(block.name, block.input, cwd))
        elif isinstance(block, TextBlock) and block.text.strip():
            texts.append(block.text)
            event = AgentEvent("text", _shorten(block.text, 200))
        if event is not None and on_event is not None:
            await on_event(event)
    return "\n".join(texts) or None


def _step_result(result: ResultMessage, duration_s: float, last_text: str) -> StepResult:
    if result.is_error and result.subtype == "success":
        # The loop ended on a failed API call: its status says whether to retry.
        raise _api_error(result)
    outcome: Outcome
    if result.subtype == "success":
        outcome = "success"
    elif result.subtype == "error_max_turns":
        outcome = "error_max_turns"
    elif result.subtype == "error_max_budget_usd":
        outcome = "error_max_budget"
    elif (result.terminal_reason or "").startswith(("aborted", "interrupted")):
        outcome = "interrupted"
    else:
        outcome = "error"
    usage = result.usage or {}
    structured = result.structured_output
    error = None
    if outcome != "success":
        error = "; ".join(result.errors or []) or result.result or result.subtype
    return StepResult(
        session_id=result.session_id,
        outcome=outcome,
        cost_usd=float(result.total_cost_usd or 0.0),
        input_tokens=sum(
            int(usage.get(key) or 0)
            for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        ),
        output_tokens=int(usage.get("output_tokens") or 0),
        turns=result.num_turns,
        duration_s=duration_s,
        text=result.result if result.result is not None else last_text,
        structured_output=structured if isinstance(structured, dict) else None,
        error=error,
    )


# Errors


def _api_error(result: ResultMessage) -> AgentError:
    status = result.api_error_status
    detail = result.result or "; ".join(result.errors or []) or "the API call failed"
    if status is None or status in _TRANSIENT_STATUSES or status >= 500:
        return AgentTransientError(
            f"Claude Code could not reach the model: {detail}", session_id=result.session_id
        )
    return AgentPermanentError(
        f"The model API refused Claude Code's request: {detail}", session_id=result.session_id
    )


def _translate(error: ClaudeSDKError, stderr_tail: Iterable[str]) -> AgentError:
    status = getattr(error, "api_error_status", None)
    if isinstance(status, int) and status not in _TRANSIENT_STATUSES and status < 500:
        return AgentPermanentError(_with_stderr(f"The model API refused: {error}", stderr_tail))
    if isinstance(error, CLINotFoundError):
        return AgentPermanentError(f"Claude Code is not installed where expected: {error}")
    if isinstance(error, CLIConnectionError) and "Working directory" in str(error):
        return AgentPermanentError(str(error))
    return AgentTransientError(_with_stderr(f"Claude Code failed: {error}", stderr_tail))


def _with_stderr(message: str, stderr_tail: Iterable[str]) -> str:
    tail = "\n".join(stderr_tail).strip()
    return f"{message}\n{tail}" if tail else message


# Cleanup


async def _flush_transcript(env: AgentEnvironment) -> None:
    """Write the step's last transcript lines, so a later step resumes with all of them."""
    if env.session_store is None:
        return
    try:
        await asyncio.shield(env.session_store.flush())  # a cancelled step still keeps them
    except Exception as error:  # they stay pending; the store's next flush writes them
        log.warning("transcript not fully written at step end: %s", error)


async def _close(client: ClaudeSDKClient) -> None:
    """Disconnect, and make sure the CLI process is gone even if that was cut short."""
    pid = _cli_pid(client)
    try:
        await client.disconnect()
    except (Exception, asyncio.CancelledError):
        # Another cancellation, or a broken transport: the kill below still ends the CLI.
        pass
    finally:
        if pid is not None:
            kill_child(pid)


def _cli_pid(client: ClaudeSDKClient) -> int | None:
    # The SDK does not expose the process; its pid lets us kill it if disconnect was cut short.
    process = getattr(getattr(client, "_transport", None), "_process", None)
    pid = getattr(process, "pid", None)
    return pid if isinstance(pid, int) else None


# Text


def _relative(path: str, cwd: Path) -> str:
    if not path:
        return "a file"
    try:
        return str(Path(path).relative_to(cwd))
    except ValueError:
        return path


def _shorten(value: str, limit: int = 80) -> str:
    line = re.sub(r"\s+", " ", value.strip())
    return line if len(line) <= limit else line[: limit - 1] + "…"

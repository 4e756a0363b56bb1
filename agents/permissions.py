"""What each step's agent may do, enforced on every tool call it makes.

A refusal is a sentence the model reads as the tool's result, so it can adapt.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agents.runner import ToolGate

READ_TOOLS = ("Read", "Grep", "Glob", "LS")
EDIT_TOOLS = ("Edit", "MultiEdit", "Write", "NotebookEdit")
PLAN_FILE = "PLAN.md"

# Shell syntax that could chain or redirect beyond the one allowed command.
SHELL_SYNTAX = re.compile(r"[;&|`$<>\n\\]|\(|\)")
READ_ONLY_GIT = {"status", "diff", "log", "show", "blame", "ls-files", "rev-parse"}
# Options that make those commands write a file or start a program.
GIT_SIDE_DOORS = re.compile(r"^(--output|--open-files-in-pager|-O|--ext-diff|--textconv)")


def planning_gate(worktree: Path, mcp_tools: Iterable[str] = ()) -> ToolGate:
    """Planning reads the worktree (Read, and Fixbot's own search tools) and writes only
    PLAN.md. It runs no programs at all: no Bash, whose "read-only" commands had side doors
    (`git grep -O<cmd>`, `git log --output=<file>`)."""
    allowed_mcp = tuple(mcp_tools)
    plan_file = worktree.resolve() / PLAN_FILE

    async def gate(tool: str, tool_input: dict[str, Any]) -> str | None:
        if tool == "Read":
            if confined(worktree, _path_of(tool_input)) is None:
                return (
                    f"Refused: {_path_of(tool_input)} is outside the task's repository "
                    "checkout (or in .git)."
                )
            return None
        if tool in EDIT_TOOLS:
            # Links resolved: a PLAN.md that is a link is not the plan file.
            if confined(worktree, _path_of(tool_input)) == plan_file:
                return None
            return (
                f"Refused: the planning step may only write {PLAN_FILE}. Describe changes "
                "to other files in the plan instead; the execution step makes them."
            )
        if tool.startswith(allowed_mcp) and allowed_mcp:
            return None
        return (
            f"Refused: the planning step may Read files, search them with the grep and "
            f"list_files tools, and write {PLAN_FILE}; it runs no commands and may not use "
            f"{tool}."
        )

    return gate


def execution_gate(
    worktree: Path, commands: Iterable[str | None], mcp_tools: Iterable[str] = ()
) -> ToolGate:
    """Execution edits inside its worktree and runs only the repo's test and lint commands."""
    allowed_commands = [shlex.split(command) for command in commands if command]
    allowed_mcp = tuple(mcp_tools)

    async def gate(tool: str, tool_input: dict[str, Any]) -> str | None:
        if tool in READ_TOOLS:
            return _inside(worktree, _path_of(tool_input), allow_missing=True)
        if tool in EDIT_TOOLS:
            refusal = _inside(worktree, _path_of(tool_input), allow_missing=True)
            if refusal is None and ".git" in _resolve(worktree, _path_of(tool_input)).parts:
                return "Refused: git's own files are not to be edited."
            return refusal
        if tool == "Bash":
            return _command_refusal(str(tool_input.get("command", "")), allowed_commands)
        if tool.startswith(allowed_mcp) and allowed_mcp:
            return None
        return f"Refused: the execution step may read, edit files and run tests, not use {tool}."

    return gate


def _command_refusal(command: str, allowed: list[list[str]]) -> str | None:
    words = command.strip().split() if not SHELL_SYNTAX.search(command) else []
    for prefix in allowed:
        if words[: len(prefix)] == prefix:
            return None
    if len(words) >= 2 and words[0] == "git" and words[1] in READ_ONLY_GIT:
        unquoted = _shell_words(command)
        if unquoted is not None and not any(GIT_SIDE_DOORS.match(word) for word in unquoted):
            return None
    names = " or ".join(f"`{' '.join(prefix)}`" for prefix in allowed) or "no command"
    return (
        f"Refused: Bash may run only {names} (optionally followed by test paths), or "
        "read-only git (status, diff, log, show). No pipes, redirects or chained commands. "
        "Fixbot commits and pushes itself."
    )


def _shell_words(command: str) -> list[str] | None:
    """The words as the shell will see them (quotes removed); None when unparsable."""
    try:
        return shlex.split(command)
    except ValueError:
        return None


def _path_of(tool_input: dict[str, Any]) -> str:
    return str(
        tool_input.get("file_path")
        or tool_input.get("notebook_path")
        or tool_input.get("path")
        or "."
    )


def _resolve(worktree: Path, path: str) -> Path:
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = worktree / candidate
    return candidate.resolve()


def confined(worktree: Path, path: str) -> Path | None:
    """`path` (relative to the worktree, or absolute) with symlinks resolved, when it lies
    inside the worktree and outside git's own files; None otherwise."""
    root = worktree.resolve()
    target = _resolve(root, path)
    if not target.is_relative_to(root) or ".git" in target.relative_to(root).parts:
        return None
    return target


def _inside(worktree: Path, path: str, *, allow_missing: bool) -> str | None:
    target = _resolve(worktree, path)
    if target.is_relative_to(worktree.resolve()) and (allow_missing or target.exists()):
        return None
    return f"Refused: {path} is outside the task's repository checkout."

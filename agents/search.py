"""The planner's search tools, `grep` and `list_files`, over the task's worktree only.

They run inside Fixbot's own process (an in-process MCP server), so searching the code
never starts a program the model could steer (`git grep -O`, `find -exec`, a shell).
Every path is checked with symlinks resolved: nothing outside the worktree and nothing
under `.git` is listed or read. Results are capped so one call cannot flood the context.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from claude_agent_sdk import create_sdk_mcp_server, tool

from agents.permissions import confined

SERVER = "fixbot_search"
GREP_TOOL = f"mcp__{SERVER}__grep"
LIST_TOOL = f"mcp__{SERVER}__list_files"
TOOLS = (GREP_TOOL, LIST_TOOL)

MAX_MATCHES = 200
MAX_FILES = 500
MAX_FILE_BYTES = 1_000_000  # larger files are data, not code worth grepping
MAX_LINE = 300  # characters of a matching line shown
MAX_PATTERN = 500

_GREP_SCHEMA = {
    "type": "object",
    "properties": {
        "pattern": {"type": "string", "description": "Python regular expression"},
        "path": {"type": "string", "description": "file or folder to search; default: all"},
        "glob": {"type": "string", "description": "only files matching, e.g. **/*.py"},
        "ignore_case": {"type": "boolean"},
    },
    "required": ["pattern"],
}
_LIST_SCHEMA = {
    "type": "object",
    "properties": {
        "pattern": {"type": "string", "description": "glob, e.g. **/*.py; default: all"},
        "path": {"type": "string", "description": "folder to list; default: the checkout"},
    },
}


class SearchRefused(ValueError):
    """A search the tools will not do; its text is what the model reads."""


def search_server(worktree: Path) -> dict[str, Any]:
    """The MCP server (an SDK config dict of type "sdk") with `grep` and `list_files`."""

    @tool(
        "grep",
        "Search the repository's files for a regular expression (Python syntax). Returns "
        f"path:line: text, at most {MAX_MATCHES} matches. Optional: path (a file or folder "
        "in the repository), glob (e.g. **/*.py), ignore_case.",
        _GREP_SCHEMA,
    )
    async def grep_tool(args: dict[str, Any]) -> dict[str, Any]:
        return await _answer(
            grep,
            worktree,
            str(args.get("pattern") or ""),
            str(args.get("path") or "."),
            str(args.get("glob") or "") or None,
            bool(args.get("ignore_case")),
        )

    @tool(
        "list_files",
        f"List the repository's files matching a glob (e.g. **/*.py), at most {MAX_FILES}. "
        "Optional: path, a folder in the repository to list.",
        _LIST_SCHEMA,
    )
    async def list_tool(args: dict[str, Any]) -> dict[str, Any]:
        return await _answer(
            list_files, worktree, str(args.get("pattern") or "**"), str(args.get("path") or ".")
        )

    return dict(create_sdk_mcp_server(SERVER, tools=[grep_tool, list_tool]))


async def _answer(function: Any, *args: Any) -> dict[str, Any]:
    # File walks and regular expressions are blocking work: off the event loop.
    try:
        text = await asyncio.to_thread(function, *args)
    except SearchRefused as refusal:
        return {"content": [{"type": "text", "text": str(refusal)}], "is_error": True}
    return {"content": [{"type": "text", "text": text}]}


def grep(
    worktree: Path,
    pattern: str,
    path: str = ".",
    glob: str | None = None,
    ignore_case: bool = False,
) -> str:
    """Matching lines as `path:line: text`, capped; raises SearchRefused."""
    if not pattern or len(pattern) > MAX_PATTERN:
        raise SearchRefused(f"Give a pattern of 1 to {MAX_PATTERN} characters.")
    try:
        regex = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as error:
        raise SearchRefused(f"Not a valid regular expression: {error}.") from None
    lines: list[str] = []
    for relative in _walk(worktree, path):
        if glob and not _matches(relative, glob):
            continue
        for number, line in _lines(worktree / relative):
            if regex.search(line):
                lines.append(f"{relative}:{number}: {line[:MAX_LINE]}")
                if len(lines) >= MAX_MATCHES:
                    return "\n".join([*lines, f"(stopped at {MAX_MATCHES} matches)"])
    return "\n".join(lines) or "No matches."


def list_files(worktree: Path, pattern: str = "**", path: str = ".") -> str:
    """The worktree's files matching `pattern`, one a line, capped; raises SearchRefused."""
    found: list[str] = []
    for relative in _walk(worktree, path):
        if _matches(relative, pattern):
            found.append(relative)
            if len(found) >= MAX_FILES:
                return "\n".join([*found, f"(stopped at {MAX_FILES} files)"])
    return "\n".join(found) or "No files match."


def _walk(worktree: Path, path: str) -> Iterator[str]:
    """Files under `path` (relative to the worktree, posix), never following a link out."""
    root = worktree.resolve()
    start = confined(root, path)
    if start is None:
        raise SearchRefused(
            f"Refused: {path} is outside the task's repository checkout (or in .git)."
        )
    if start.is_file():
        yield start.relative_to(root).as_posix()
        return
    for folder, dirs, files in os.walk(start):  # followlinks=False: linked folders are skipped
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(files):
            target = confined(root, os.path.join(folder, name))
            if target is not None and target.is_file():
                yield Path(folder, name).relative_to(root).as_posix()


def _matches(relative: str, pattern: str) -> bool:
    pattern = pattern.lstrip("/")
    if pattern in ("**", "**/*", "*"):
        return pattern != "*" or "/" not in relative
    # fnmatch's * also crosses "/"; "**/x" also matches x at the top.
    return fnmatch.fnmatchcase(relative, pattern) or (
        pattern.startswith("**/") and fnmatch.fnmatchcase(relative, pattern[3:])
    )


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return
        data = path.read_bytes()
    except OSError:
        return
    if b"\0" in data[:8192]:  # binary
        return
    yield from enumerate(data.decode(errors="replace").splitlines(), start=1)

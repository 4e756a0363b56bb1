"""What the task machinery needs from the world: Slack threads, Claude Code, git and the pool.

Each seam has its real adapter (`bot.thread.SlackThreads`, `agents.runner.run_agent_step`,
`bot.tasks.repos.GitRepos`, `bot.jobs.WorkerPool`) and an in-memory twin in
`tests/memory.py`, so the state machine and each step can be run in-process.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from agents.runner import AgentEnvironment, AgentStep, EventHandler, SessionHandler, StepResult
from bot.views import Message
from repos.config import RepoConfig
from repos.environment import RepoEnvironment
from repos.verify import Verification
from repos.workspace import Worktree


class Threads(Protocol):
    """Slack as the task machinery uses it; every text is redacted on the way out."""

    async def post(
        self, channel: str, message: Message, *, thread_ts: str | None = None
    ) -> str: ...

    async def update(self, channel: str, ts: str, message: Message) -> None: ...

    async def ephemeral(
        self, channel: str, user: str, text: str, *, thread_ts: str | None = None
    ) -> None: ...

    async def upload(
        self, channel: str, thread_ts: str, *, filename: str, content: str, title: str
    ) -> None: ...

    async def publish_home(self, user: str, view: dict[str, Any]) -> None: ...

    async def permalink(self, channel: str, ts: str) -> str | None: ...

    async def replies(self, channel: str, thread_ts: str) -> list[dict[str, Any]]: ...


class AgentRunner(Protocol):
    """Runs one Claude Code step to its end (`agents.runner.run_agent_step`)."""

    async def __call__(
        self,
        step: AgentStep,
        env: AgentEnvironment,
        on_event: EventHandler | None = None,
        on_session: SessionHandler | None = None,
    ) -> StepResult: ...


class Repos(Protocol):
    """A task's checkout: its worktree, the commits in it, its tests, its push."""

    def worktree_path(self, branch: str) -> Path: ...

    async def prepare(self, repo: RepoConfig, branch: str, base_commit: str | None) -> Worktree: ...

    async def remove(self, worktree: Worktree) -> None: ...

    async def cleanup(self, max_age: timedelta) -> list[Path]:
        """Remove worktrees untouched for `max_age` (failed tasks keep theirs till then)."""

    async def environment(self, repo: RepoConfig, worktree: Path) -> RepoEnvironment | None: ...

    async def verify(
        self,
        repo: RepoConfig,
        worktree: Path,
        base_commit: str,
        environment: RepoEnvironment | None,
    ) -> Verification: ...

    async def committed(self, worktree: Path, message: str) -> str | None: ...

    async def commit_all(
        self, worktree: Path, message: str, *, only: Sequence[str] = ()
    ) -> str: ...

    async def discard_except(self, worktree: Path, keep: str) -> None: ...

    async def changed_files(self, worktree: Path, base_commit: str) -> list[str]: ...

    async def push(self, repo: RepoConfig, worktree: Path, branch: str) -> None: ...


class JobControl(Protocol):
    """The worker pool of this process, as the task machinery signals it."""

    def wake(self) -> None:
        """A job was added: idle workers look now."""

    def cancel_task(self, task_id: int) -> None:
        """Stop this process's running steps of a task now."""


class NoWorkers:
    """`JobControl` for a process without workers (the CLI): the workers of the running
    app find its jobs at their next poll, and a cancelled step at its next heartbeat."""

    def wake(self) -> None:
        pass

    def cancel_task(self, task_id: int) -> None:
        pass

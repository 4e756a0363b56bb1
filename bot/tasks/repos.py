"""`Repos` on real git: worktrees from `Workspaces`, verification in the sandbox, pushes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from bot.config import Settings
from repos import workspace
from repos.config import RepoConfig
from repos.environment import RepoEnvironment, prepare_environment
from repos.sandbox import Endpoint, Sandbox
from repos.verify import Verification, verify_fix
from repos.workspace import Workspaces, Worktree


class GitRepos:
    def __init__(self, settings: Settings, workspaces: Workspaces, sandbox: Sandbox) -> None:
        self.settings = settings
        self.workspaces = workspaces
        self.sandbox = sandbox

    def worktree_path(self, branch: str) -> Path:
        return self.workspaces.worktree_path(branch)

    async def prepare(self, repo: RepoConfig, branch: str, base_commit: str | None) -> Worktree:
        return await self.workspaces.prepare(repo, branch, base_commit)

    async def remove(self, worktree: Worktree) -> None:
        await self.workspaces.remove(worktree)

    async def cleanup(self, max_age: timedelta) -> list[Path]:
        return await self.workspaces.cleanup(max_age)

    async def environment(self, repo: RepoConfig, worktree: Path) -> RepoEnvironment | None:
        return await prepare_environment(
            repo,
            worktree,
            self.workspaces.root / "envs",
            within_s=self.settings.limits.setup_timeout_s,
            sandbox=self.sandbox,
        )

    async def verify(
        self,
        repo: RepoConfig,
        worktree: Path,
        base_commit: str,
        environment: RepoEnvironment | None,
    ) -> Verification:
        return await verify_fix(
            worktree,
            base_commit,
            repo.test_command,
            timeout=self.settings.limits.test_run_timeout_s,
            sandbox=self.sandbox,
            reach=[Endpoint.parse(host) for host in repo.network_allow],
            environment=environment,
            checkouts=self.workspaces.root / "checkouts",
        )

    async def committed(self, worktree: Path, message: str) -> str | None:
        return await workspace.committed(worktree, message)

    async def commit_all(self, worktree: Path, message: str, *, only: Sequence[str] = ()) -> str:
        return await workspace.commit_all(worktree, message, only=only)

    async def discard_except(self, worktree: Path, keep: str) -> None:
        await workspace.discard_except(worktree, keep)

    async def changed_files(self, worktree: Path, base_commit: str) -> list[str]:
        return await workspace.changed_files(worktree, base_commit)

    async def push(self, repo: RepoConfig, worktree: Path, branch: str) -> None:
        token = self.settings.github_token
        await self.workspaces.push(
            repo, worktree, branch, token.get_secret_value() if token else None
        )

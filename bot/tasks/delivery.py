"""What leaves Fixbot for a task: pushes, its one pull request, and Jira comments."""

from __future__ import annotations

from pathlib import Path

from agents.permissions import PLAN_FILE
from agents.plan import Plan
from bot import views
from bot.config import Settings
from bot.dashboard import TaskSummary
from bot.integrations import IntegrationError
from bot.integrations.github import GitHubClient, PullRequest
from bot.integrations.jira import JiraClient
from bot.models import RefKind
from bot.redact import Redactor
from bot.seams import Repos
from bot.tasks.store import TaskStore
from bot.tasks.thread import TaskThread
from repos.config import RepoConfig
from repos.verify import Verification
from storage.tables import Task


class Delivery:
    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        repos: Repos,
        *,
        github: GitHubClient | None,
        jira: JiraClient | None,
        redactor: Redactor,
    ) -> None:
        self.settings = settings
        self.store = store
        self.repos = repos
        self.github = github
        self.jira = jira
        self.redact = redactor

    async def publish_plan(
        self,
        task: Task,
        thread: TaskThread,
        repo: RepoConfig,
        worktree: Path,
        plan: Plan,
        markdown: str,
    ) -> str | None:
        """Make the full plan (PLAN.md, redacted) reachable: a draft pull request with
        GitHub, else a file in the thread; returns where to read it, if a link.

        Only the plan leaves planning: whatever else is in the worktree is discarded and the
        commit holds PLAN.md and nothing else.
        """
        await self.repos.discard_except(worktree, PLAN_FILE)
        (worktree / PLAN_FILE).unlink(missing_ok=True)  # never written through a link
        (worktree / PLAN_FILE).write_text(markdown)
        if self.github is None:
            await thread.upload(
                filename="PLAN.md", content=markdown, title=f"Plan for {task.ref_key}"
            )
            return None
        message = self.redact(f"Plan for {task.ref_key}")
        await self.repos.commit_all(worktree, message, only=[PLAN_FILE])
        await self._push(task, repo, worktree)
        pull = await self._open_pull_request(task, thread, repo, plan, draft=True)
        return f"{pull.html_url}/files"

    async def deliver(
        self,
        task: Task,
        thread: TaskThread,
        repo: RepoConfig,
        worktree: Path,
        verification: Verification,
        duration_s: float,
    ) -> str:
        """Push the verified fix and make its pull request ready; returns its URL."""
        assert task.plan is not None
        await self._push(task, repo, worktree)
        if self.github is None:
            return f"{repo.clone_url} (branch {task.branch})"
        plan = Plan.model_validate(task.plan)
        pull = await self._open_pull_request(
            task, thread, repo, plan, verification=verification, duration_s=duration_s
        )
        if not verification.test_changes:  # else it stays a draft until they are approved
            owner, name = repo.name.split("/")
            pull = await self.github.mark_ready_for_review(owner, name, pull.number)
        await self.tell_jira(
            task,
            thread,
            f"Fixbot opened a pull request: {pull.html_url}\n\n{plan.summary}",
            marker="pull request",
            transition=self.settings.jira_transition,
        )
        return pull.html_url

    async def mark_ready(self, task: Task, repo: RepoConfig) -> None:
        """The fix's test changes were approved: its draft pull request is ready for review."""
        assert self.github is not None and task.pr_number is not None
        owner, name = repo.name.split("/")
        await self.github.mark_ready_for_review(owner, name, task.pr_number)

    async def _open_pull_request(
        self,
        task: Task,
        thread: TaskThread,
        repo: RepoConfig,
        plan: Plan,
        *,
        verification: Verification | None = None,
        duration_s: float | None = None,
        draft: bool = False,
    ) -> PullRequest:
        """Open the task's pull request, or update it (the plan's draft, then the fix)."""
        assert self.github is not None and task.branch is not None
        owner, name = repo.name.split("/")
        body = views.pull_request_body(
            TaskSummary.of(task),
            plan,
            thread_url=await thread.permalink(),
            red=Verification.excerpt(verification.red) if verification else None,
            green=Verification.excerpt(verification.green) if verification else None,
            cost_usd=task.cost_usd,
            duration_s=duration_s,
            test_changes=verification.test_changes if verification else [],
        )
        pull = await self.github.ensure_pull_request(
            owner,
            name,
            head=task.branch,
            base=repo.default_branch,
            title=self.redact(f"Fix {task.ref_key}: {task.title}"[:200]),
            body=self.redact(body),
            draft=draft,
        )
        await self.store.save(task, pr_number=pull.number, pr_url=pull.html_url)
        return pull

    async def _push(self, task: Task, repo: RepoConfig, worktree: Path) -> None:
        assert task.branch is not None
        await self.repos.push(repo, worktree, task.branch)

    async def tell_jira(
        self,
        task: Task,
        thread: TaskThread,
        text: str,
        *,
        marker: str,
        transition: str | None = None,
    ) -> None:
        """Comment on (and move) the task's Jira issue; a Jira failure is told, not fatal.

        The comment ends with a marker naming the task and what it reports, so a resumed
        step that finds its marker there does not comment twice.
        """
        if self.jira is None or task.ref_kind != RefKind.JIRA:
            return
        signed = f"(Fixbot task {task.id}: {marker})"
        try:
            said = await self.jira.comments(task.ref_key)
            if not any(signed in comment.body for comment in said):
                await self.jira.add_comment(task.ref_key, f"{self.redact(text)}\n\n{signed}")
            if transition:
                await self.jira.transition(task.ref_key, transition)
        except IntegrationError as error:
            await thread.reply(views.ended_message(f":warning: {views.escape(str(error))}"))

"""The task machinery as one object, for the handlers, the conversation and the CLI."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agents.runner import AgentEnvironment
from bot import views
from bot.config import Settings
from bot.dashboard import Dashboard, HomeRefresher, load_board, with_mine
from bot.integrations.github import GitHubClient
from bot.integrations.jira import JiraClient
from bot.policy import ApprovalPolicy
from bot.redact import Redactor
from bot.seams import AgentRunner, JobControl, Repos, Threads
from bot.sources import Sources
from bot.tasks.delivery import Delivery
from bot.tasks.lifecycle import Lifecycle
from bot.tasks.questions import Questions
from bot.tasks.steps import Steps
from bot.tasks.store import TaskStore
from storage.queue import JobQueue


class Workflow:
    """Builds the parts (store, lifecycle, steps, delivery, questions) around the seams, and
    offers what handlers call. A part's own methods are reached through it."""

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        queue: JobQueue,
        threads: Threads,
        jobs: JobControl,
        *,
        sources: Sources,
        repos: Repos,
        runner: AgentRunner,
        agent_env: AgentEnvironment,
        github: GitHubClient | None,
        jira: JiraClient | None,
        redactor: Redactor,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.threads = threads
        self.jobs = jobs
        self.sources = sources
        self.repos = repos
        self.agent_env = agent_env
        self.github = github
        self.jira = jira
        self.redact = redactor
        self.policy = ApprovalPolicy.from_settings(settings)
        # Republishes App Home, debounced, for people who opened it lately.
        self.home = HomeRefresher(self._home_board, self._home_view, threads.publish_home)
        self.store = TaskStore(sessions)
        self.delivery = Delivery(
            settings, self.store, repos, github=github, jira=jira, redactor=redactor
        )
        self.questions = Questions(settings, self.store, self.policy)
        self.lifecycle = Lifecycle(
            settings,
            self.store,
            queue,
            threads,
            jobs,
            sources=sources,
            repos=repos,
            delivery=self.delivery,
            questions=self.questions,
            policy=self.policy,
            changed=self.home.changed,
        )
        self.steps = Steps(
            settings,
            self.store,
            self.lifecycle,
            repos=repos,
            runner=runner,
            agent_env=agent_env,
            sources=sources,
            delivery=self.delivery,
            questions=self.questions,
            redactor=redactor,
        )
        lifecycle = self.lifecycle
        self.request_fix = lifecycle.request_fix
        self.create_task = lifecycle.create_task
        self.approve = lifecycle.approve
        self.approve_as = lifecycle.approve_as
        self.reject = lifecycle.reject
        self.approve_test_changes = lifecycle.approve_test_changes
        self.retry = lifecycle.retry
        self.cancel = lifecycle.cancel
        self.take_reply = lifecycle.take_reply
        self.pull_request_closed = lifecycle.pull_request_closed
        self.transition = lifecycle.transition
        self.fail = lifecycle.fail
        self.sweep = lifecycle.sweep
        self.run_job = self.steps.run_job
        self.task_in_thread = self.store.in_thread
        self.task_for_pull = self.store.for_pull

    async def publish_home(self, user: str, page: int = 0) -> None:
        """Publish the App Home dashboard for `user`, and keep it fresh while they look."""
        await self.home.show(user, page)

    async def aclose(self) -> None:
        """Cancel a pending Home republish and close the vendor clients."""
        await self.home.aclose()
        for service in (self.sources.sentry, self.github, self.jira):
            if service is not None:
                await service.aclose()

    async def _home_board(self, page: int) -> Dashboard:
        return await load_board(self.sessions, self.settings, page)

    async def _home_view(self, board: Dashboard, user: str) -> dict[str, Any]:
        dashboard = await with_mine(self.sessions, board, user)
        return views.home_view(dashboard, user, is_approver=self.policy.may_approve(user))

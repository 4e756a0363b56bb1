"""Fixbot's parts, built from the settings: database, clients, workflow and worker pool.

Every kind of Fixbot process builds itself here: the Slack side (`python app.py`), the
worker processes (`fixbot worker`) and the operator CLI (`fixbot tasks …`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agents.runner import AgentEnvironment, run_agent_step
from bot import metrics
from bot.aftermerge import AfterMerge
from bot.config import Settings, load_settings, scrub_environment
from bot.conversation import Conversation
from bot.errors import ConfigError
from bot.faults import transient
from bot.integrations.github import GitHubClient
from bot.integrations.jira import JiraClient
from bot.integrations.sentry import SentryClient
from bot.jobs import WorkerPool
from bot.logs import setup_logging
from bot.redact import Redactor
from bot.seams import JobControl
from bot.sources import Sources
from bot.tasks import Workflow
from bot.tasks.repos import GitRepos
from bot.thread import SlackThreads
from repos.errors import FixbotError
from repos.sandbox import NO_SANDBOX_HELP, Sandbox
from repos.workspace import Workspaces
from storage.db import create_engine, migrate
from storage.jobs import JobKind
from storage.queue import JobQueue
from storage.sessions import DatabaseSessionStore

log = logging.getLogger("fixbot")

WORKTREE_MAX_AGE = timedelta(days=7)
START_CHECK_TIMEOUT_S = 30.0  # the database and Slack each get this long to answer at start


class CannotStart(FixbotError):
    """Slack refused a token, or the database does not answer: serving would be pointless."""


def run_process(serve: Callable[[Settings], Coroutine[Any, Any, None]]) -> int:
    """Load the settings, scrub the environment, set up logging and run `serve` to its end:
    the exit code, 2 (with the reason on stderr) when a setting is wrong or it cannot start."""
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"fixbot: {error}", file=sys.stderr)
        return 2
    scrub_environment()
    setup_logging(settings.log_format, Redactor(settings.secret_values()))
    try:
        asyncio.run(serve(settings))
    except CannotStart as error:
        print(f"fixbot: {error}", file=sys.stderr)
        return 2
    return 0


def database_engine(settings: Settings, *, runs_steps: bool) -> AsyncEngine:
    """The engine, its pool sized for the agent steps this process runs (and its after-merge
    worker), if it runs them."""
    limits = settings.concurrency
    steps = limits.planning + limits.execution + 1 if runs_steps else 0
    return create_engine(settings.database_url.get_secret_value(), steps=steps)


async def start_database(settings: Settings, engine: AsyncEngine) -> None:
    """Bring the schema up to date; an unreachable database is CannotStart, in doctor's words."""
    try:
        async with asyncio.timeout(START_CHECK_TIMEOUT_S):
            await migrate(engine)
    except Exception as error:
        if not isinstance(error, TimeoutError) and transient(error) is None:
            raise  # reachable, and something else is wrong: a bug worth its traceback
        from bot.cli import check_database

        check = await check_database(settings)
        raise CannotStart(
            check.detail if check.ok is False else f"the database does not answer ({error})"
        ) from None


def slack_client(settings: Settings) -> AsyncWebClient:
    """The Web API client: rate limits (Retry-After), connection and server errors retried."""
    return AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        retry_handlers=[
            metrics.SlackErrorCounter(),  # first: it sees every attempt and never retries
            AsyncRateLimitErrorRetryHandler(max_retry_count=5),
            AsyncConnectionErrorRetryHandler(max_retry_count=3),
            AsyncServerErrorRetryHandler(max_retry_count=2),
        ],
    )


async def close_client(client: AsyncWebClient) -> None:
    with contextlib.suppress(Exception):
        await client.session.close() if client.session else None


def build_workflow(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    queue: JobQueue,
    client: AsyncWebClient,
    jobs: JobControl,
) -> Workflow:
    """The workflow and every client it talks to; `jobs`: where this process's agent steps
    run (its pool, its worker processes, or none for the CLI)."""
    redactor = Redactor(settings.secret_values())
    sentry = (
        SentryClient(
            settings.sentry_url, settings.sentry_auth_token.get_secret_value(), settings.sentry_org
        )
        if settings.sentry_auth_token and settings.sentry_org
        else None
    )
    github = (
        GitHubClient(settings.github_api_url, settings.github_token.get_secret_value())
        if settings.github_token
        else None
    )
    jira = (
        JiraClient(
            settings.jira_url, settings.jira_email, settings.jira_api_token.get_secret_value()
        )
        if settings.jira_url and settings.jira_email and settings.jira_api_token
        else None
    )
    agent_env = AgentEnvironment(
        home=settings.agent_home,
        session_store=DatabaseSessionStore(sessions),
        cli_path=settings.claude_cli_path,
        anthropic_api_key=_secret(settings.anthropic_api_key),
        oauth_token=_secret(settings.claude_code_oauth_token),
        base_url=settings.anthropic_base_url,
        extra=(
            {"CLAUDE_CODE_MAX_RETRIES": str(settings.claude_code_max_retries)}
            if settings.claude_code_max_retries is not None
            else {}
        ),
        sandbox=Sandbox(settings.sandbox, bwrap=settings.fixbot_bwrap),
    )
    return Workflow(
        settings,
        sessions,
        queue,
        SlackThreads(client, redactor),
        jobs,
        sources=Sources(settings, sentry, github, jira),
        repos=GitRepos(settings, Workspaces(settings.fixbot_workdir.resolve()), agent_env.sandbox),
        runner=run_agent_step,
        agent_env=agent_env,
        github=github,
        jira=jira,
        redactor=redactor,
    )


@dataclass
class Parts:
    """One process's Fixbot: the Slack Web API client, the workflow and its conversation."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    queue: JobQueue
    client: AsyncWebClient
    workflow: Workflow
    conversation: Conversation

    async def aclose(self) -> None:
        await self.conversation.aclose()
        await self.workflow.aclose()
        await close_client(self.client)


def job_queue(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], owner: str
) -> JobQueue:
    """The durable queue as this process sees it; `owner` names its leases."""
    return JobQueue(sessions, owner, lease=timedelta(seconds=settings.limits.job_lease_s))


def build(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    queue: JobQueue,
    jobs: JobControl,
) -> Parts:
    """Everything but running the agent steps, which `jobs` does."""
    client = slack_client(settings)
    workflow = build_workflow(settings, sessions, queue, client, jobs)
    return Parts(settings, sessions, queue, client, workflow, conversation_around(workflow))


def conversation_around(workflow: Workflow) -> Conversation:
    """What people and Sentry say around `workflow`'s tasks: alerts and their repeats,
    replies, mentions, and what follows a merged fix."""
    after_merge = AfterMerge(
        workflow.settings,
        workflow.store,
        workflow.lifecycle,
        workflow.threads,
        workflow.jobs,
        sources=workflow.sources,
        jira=workflow.jira,
        redactor=workflow.redact,
        changed=workflow.home.changed,
    )
    return Conversation(
        workflow.settings, workflow.sessions, workflow.threads, workflow, after_merge
    )


@contextlib.asynccontextmanager
async def running_pool(parts: Parts, pool: WorkerPool) -> AsyncIterator[WorkerPool]:
    """Run the agent steps of this process in `pool` (the `jobs` its parts were built with)
    until the block ends, then stop them within the grace period; worktrees of failed tasks
    are removed a week later meanwhile."""
    workflow = parts.workflow
    handlers_by_kind = {
        JobKind.PLANNING: workflow.run_job,
        JobKind.EXECUTION: workflow.run_job,
        JobKind.AFTER_MERGE: parts.conversation.after_merge.run_job,
    }
    pool.start(handlers_by_kind, on_failure=workflow.fail, sweep=workflow.sweep)
    cleanup = asyncio.create_task(workflow.repos.cleanup(WORKTREE_MAX_AGE))
    try:
        await _report_sandbox(workflow.agent_env.sandbox)
        yield pool
    finally:
        await pool.stop(parts.settings.limits.shutdown_grace_s)
        cleanup.cancel()
        await asyncio.gather(cleanup, return_exceptions=True)


async def _report_sandbox(sandbox: Sandbox) -> None:
    """Say at start whether agents can run confined: an error when they cannot run at all."""
    if not sandbox.enabled:
        log.warning(
            "sandbox: off: agents and test runs are NOT confined; anything an agent is "
            "tricked into doing runs as Fixbot's user with its network (fixbot.yml `sandbox`)"
        )
        return
    problem = await sandbox.problem()
    if problem is not None:
        log.error("no agent can run: %s: %s", problem, NO_SANDBOX_HELP)
    else:
        log.info("sandbox: bubblewrap works; agents and test runs are confined")


def _secret(value: object) -> str | None:
    return value.get_secret_value() if value is not None else None  # type: ignore[attr-defined]

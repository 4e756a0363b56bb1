"""Fixbot's composition root: settings → database → clients → pool → Bolt → Socket Mode + HTTP.

`python app.py` (or `fixbot run`) checks that Slack and the database take it (a refused
token or an unreachable database exits 2 with the words `fixbot doctor` would use), says
in one line what it serves, then serves until SIGTERM or SIGINT: it stops claiming work,
gives running steps time to reach a safe point, and exits 0, connected to Slack or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import uuid
from collections.abc import Awaitable, Mapping
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path
from typing import TypeVar

from aiohttp import web
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import handlers
from agents.runner import AgentEnvironment
from agents.sandbox import NO_SANDBOX_HELP, Sandbox
from agents.workspace import Workspaces
from bot import metrics
from bot.config import Settings, load_settings, scrub_environment
from bot.conversation import Conversation
from bot.errors import ConfigError, FixbotError
from bot.faults import transient
from bot.http import make_http_app
from bot.integrations.github import GitHubClient
from bot.integrations.jira import JiraClient
from bot.integrations.sentry import SentryClient
from bot.jobs import WorkerPool
from bot.logs import WithoutTraceback, setup_logging
from bot.models import AFTER_MERGE
from bot.redact import Redactor
from bot.sources import Sources
from bot.thread import SlackThreads
from bot.webhooks import webhook_routes
from bot.workflow import Workflow
from storage.db import create_engine, migrate, ping, sessionmaker
from storage.queue import JobQueue
from storage.sessions import DatabaseSessionStore
from storage.tables import Job

log = logging.getLogger("fixbot")

WORKTREE_MAX_AGE = timedelta(days=7)
SHUTDOWN_GRACE_S = 20.0  # running steps get this long to finish; exit stays within 30 s
START_CHECK_TIMEOUT_S = 30.0  # the database and Slack each get this long to answer at start

T = TypeVar("T")


class CannotStart(FixbotError):
    """Slack refused a token, or the database does not answer: serving would be pointless."""


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


def build_workflow(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    queue: JobQueue,
    client: AsyncWebClient,
) -> Workflow:
    """The workflow and every client it talks to (the app and the operator CLI share this)."""
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
        Sources(settings, sentry, github, jira),
        Workspaces(settings.fixbot_workdir.resolve()),
        agent_env,
        github=github,
        jira=jira,
        redactor=redactor,
    )


async def serve(settings: Settings, mounts: Mapping[str, web.Application] | None = None) -> None:
    """Run Fixbot until a stop signal; `mounts` are served beside it (`fixbot local`).
    Raises CannotStart when it cannot serve at all."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    limits = settings.concurrency  # and one after-merge worker
    steps = limits.planning + limits.execution + 1
    engine = create_engine(settings.database_url.get_secret_value(), steps=steps)
    try:
        if not await _unless_stopped(stop, _start_database(settings, engine)):
            return
        await _serve(settings, engine, stop, mounts)
    finally:
        await engine.dispose()


async def _start_database(settings: Settings, engine: AsyncEngine) -> bool:
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
    return True


async def _check_slack(settings: Settings, client: AsyncWebClient) -> str:
    """The workspace's name; a refused token is CannotStart, an unreachable Slack a warning."""
    from bot.cli import check_slack_app, check_slack_bot

    try:
        auth = await client.auth_test()
        await client.apps_connections_open(app_token=settings.slack_app_token.get_secret_value())
    except Exception as error:
        if not isinstance(error, SlackApiError) or transient(error) is not None:
            log.warning("Slack does not answer yet (%s); connecting in the background", error)
            return "unknown (Slack not reached yet)"
        refused_bot = error.response.api_url.endswith("auth.test")
        check = check_slack_bot if refused_bot else check_slack_app
        raise CannotStart((await check(settings)).detail) from None
    return f"{auth.get('team')} ({auth.get('url')})"


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None when a stop signal came first (the work is cancelled)."""
    doing = asyncio.ensure_future(work)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({doing, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not doing.done():
        doing.cancel()
        await asyncio.gather(doing, return_exceptions=True)
        return None
    return doing.result()


async def _serve(
    settings: Settings,
    engine: AsyncEngine,
    stop: asyncio.Event,
    mounts: Mapping[str, web.Application] | None,
) -> None:
    sessions = sessionmaker(engine)
    owner = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    queue = JobQueue(sessions, owner, lease=timedelta(seconds=settings.limits.job_lease_s))

    client = slack_client(settings)
    workspace = await _unless_stopped(stop, _check_slack(settings, client))
    if workspace is None:
        await _close_client(client)
        return
    workflow = build_workflow(settings, sessions, queue, client)
    conversation = Conversation(workflow)
    runners = {AFTER_MERGE: conversation.after_merge.run_job}

    async def run_job(job: Job) -> None:
        await runners.get(job.kind, workflow.run_job)(job)

    pool = WorkerPool(settings, queue, run_job, workflow.fail, workflow.sweep)
    workflow.job_added = pool.wake
    workflow.task_stopped = pool.cancel_task_jobs

    bolt = AsyncApp(client=client, logger=logging.getLogger("fixbot.slack"))
    handlers.register(bolt, workflow, conversation)
    # The Socket Mode client's reconnect loop logs each failed try with a traceback: a line
    # per try is enough.
    socket_log = logging.getLogger("fixbot.slack.socket")
    socket_log.addFilter(WithoutTraceback())
    socket_mode = metrics.TimedSocketModeHandler(
        bolt, settings.slack_app_token.get_secret_value(), logger=socket_log
    )

    async def readiness() -> dict[str, bool]:
        connected = await socket_mode.client.is_connected()
        return {"database": await ping(engine), "slack": connected, "workers": pool.claiming}

    runner: web.AppRunner | None = None
    if settings.fixbot_http_port:
        runner = web.AppRunner(
            make_http_app(
                readiness,
                lambda: metrics.update_queue_lengths(sessions),
                webhooks=webhook_routes(conversation),
                mounts=mounts,
            )
        )
        await runner.setup()
        await web.TCPSite(runner, settings.fixbot_http_host, settings.fixbot_http_port).start()

    _warn_missing_parts(settings)
    http = (
        f"http://{settings.fixbot_http_host}:{settings.fixbot_http_port}"
        if settings.fixbot_http_port
        else "off"
    )
    database = make_url(settings.database_url.get_secret_value())
    log.info(
        "Fixbot %s starting: Slack workspace %s, repos %s, database %s, HTTP %s",
        version("fixbot"),
        workspace,
        ", ".join(repo.name for repo in settings.repos) or "none",
        database.render_as_string(hide_password=True),
        http,
        extra={"data": {"owner": owner}},
    )
    # Connecting runs beside the pool: work queued before a Slack outage goes on, and a
    # stop signal is heard while Slack is away.
    connecting = asyncio.create_task(socket_mode.connect_async())
    pool.start()
    # Failed tasks keep their worktree for inspection; a week later it goes.
    cleanup = asyncio.create_task(workflow.workspaces.cleanup(WORKTREE_MAX_AGE))
    await _report_sandbox(workflow.agent_env.sandbox)
    await stop.wait()

    log.info("stopping: no new work; letting running steps finish")
    connecting.cancel()
    await asyncio.gather(connecting, return_exceptions=True)
    with contextlib.suppress(Exception):  # a connection that never came up has nothing to close
        await asyncio.wait_for(socket_mode.close_async(), 5)
    await pool.stop(SHUTDOWN_GRACE_S)
    cleanup.cancel()
    await asyncio.gather(cleanup, return_exceptions=True)
    await conversation.aclose()
    await workflow.aclose()
    if runner is not None:
        await runner.cleanup()
    await _close_client(client)
    log.info("stopped")


async def _close_client(client: AsyncWebClient) -> None:
    with contextlib.suppress(Exception):
        await client.session.close() if client.session else None


def _warn_missing_parts(settings: Settings) -> None:
    """Say at start what will not work, rather than at the first task."""
    if settings.anthropic_api_key is None and settings.claude_code_oauth_token is None:
        log.warning(
            "neither ANTHROPIC_API_KEY nor CLAUDE_CODE_OAUTH_TOKEN is set: agent steps work "
            "only if Claude Code is logged in by other means"
        )
    if not settings.repos:
        log.warning("no repos in %s: /fix has no repository to work in", settings.fixbot_config)


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


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"fixbot: {error}", file=sys.stderr)
        return 2
    scrub_environment()
    setup_logging(settings.log_format, Redactor(settings.secret_values()))
    Path("data").mkdir(exist_ok=True)
    try:
        asyncio.run(serve(settings))
    except CannotStart as error:
        print(f"fixbot: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

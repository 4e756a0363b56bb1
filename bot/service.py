"""The Slack side of Fixbot: `python app.py` (or `fixbot run`).

It checks that Slack and the database take it (a refused token or an unreachable
database exits 2 with the words `fixbot doctor` would use), says in one line what it
serves, then serves until SIGTERM or SIGINT: Socket Mode, the HTTP server, and the
agent steps, in `workers.processes` worker processes (bot/workers.py) or, with 0, in
this process. On a stop signal it stops claiming work, gives running steps time to
reach a safe point, and exits 0, connected to Slack or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import TypeVar

import aiohttp
from aiohttp import web
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import handlers
from bot import metrics, wiring
from bot.config import Settings
from bot.faults import transient
from bot.http import make_http_app
from bot.jobs import WorkerPool
from bot.logs import WithoutTraceback
from bot.webhooks import webhook_routes
from bot.wiring import CannotStart
from bot.workers import WorkerProcesses
from handlers.socket_mode import AckFirstSocketModeHandler
from storage.db import ping, sessionmaker
from storage.queue import JobQueue

log = logging.getLogger("fixbot")

RESPOND_TIMEOUT_S = 30.0  # as Bolt's own respond(): slack_sdk's webhook client default

T = TypeVar("T")


async def serve(
    settings: Settings,
    mounts: Mapping[str, web.Application] | None = None,
    *,
    workspace: str | None = None,
) -> None:
    """Run Fixbot until a stop signal; `mounts` are served beside it (`fixbot local`).
    `workspace`: the name of a Slack served among the mounts, which is not checked before
    start-up (it answers only once the HTTP server is up). Raises CannotStart when it
    cannot serve at all."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    engine = wiring.database_engine(settings, runs_steps=not settings.workers.processes)
    try:
        await _unless_stopped(stop, wiring.start_database(settings, engine))
        if not stop.is_set():
            await _serve(settings, engine, stop, mounts, workspace)
    finally:
        await engine.dispose()


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
    workspace: str | None,
) -> None:
    sessions = sessionmaker(engine)
    queue = wiring.job_queue(settings, sessions, f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    # The workers start first: their start-up (imports, the sandbox check) overlaps the
    # Slack side's, so the first step does not wait for it.
    async with _agent_steps(settings, sessions, queue) as (parts, workers_ready, metrics_dir):
        if workspace is None:
            workspace = await _unless_stopped(stop, _check_slack(settings, parts.client))
        if workspace is not None:
            await _serve_slack(parts, engine, workspace, stop, mounts, workers_ready, metrics_dir)
    await parts.aclose()  # after the agent steps: they post in threads to the end
    log.info("stopped")


async def _serve_slack(
    parts: wiring.Parts,
    engine: AsyncEngine,
    workspace: str,
    stop: asyncio.Event,
    mounts: Mapping[str, web.Application] | None,
    workers_ready: Callable[[], bool],
    metrics_dir: Path | None,
) -> None:
    """Socket Mode and the HTTP server, until a stop signal."""
    settings = parts.settings
    responses = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=RESPOND_TIMEOUT_S))
    # A name, or Bolt reads the whole call stack's source to make one (~70 ms at start).
    bolt = AsyncApp(client=parts.client, logger=logging.getLogger("fixbot.slack"), name="fixbot")
    handlers.register(bolt, parts.workflow, parts.conversation, responses)
    # The Socket Mode client's reconnect loop logs each failed try with a traceback: a line
    # per try is enough.
    socket_log = logging.getLogger("fixbot.slack.socket")
    socket_log.addFilter(WithoutTraceback())
    socket_mode = AckFirstSocketModeHandler(
        bolt, settings.slack_app_token.get_secret_value(), logger=socket_log
    )

    async def readiness() -> dict[str, bool]:
        connected = await socket_mode.client.is_connected()
        return {"database": await ping(engine), "slack": connected, "workers": workers_ready()}

    async def queue_lengths() -> None:
        metrics.set_queue_lengths(await parts.queue.queued_counts())

    runner: web.AppRunner | None = None
    if settings.fixbot_http_port:
        runner = web.AppRunner(
            make_http_app(
                readiness,
                queue_lengths,
                webhooks=webhook_routes(settings, parts.workflow, parts.conversation),
                mounts=mounts,
                exposition=partial(metrics.exposition, metrics_dir),
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
        "Fixbot %s starting: Slack workspace %s, repos %s, database %s, HTTP %s, "
        "worker processes %s",
        version("fixbot"),
        workspace,
        ", ".join(repo.name for repo in settings.repos) or "none",
        database.render_as_string(hide_password=True),
        http,
        settings.workers.processes or "none (steps run in this process)",
        extra={"data": {"owner": parts.queue.owner}},
    )
    # Connecting runs beside the agent steps: work queued before a Slack outage goes on,
    # and a stop signal is heard while Slack is away.
    connecting = asyncio.create_task(socket_mode.connect_async())
    await stop.wait()

    log.info("stopping: no new work; letting running steps finish")
    connecting.cancel()
    await asyncio.gather(connecting, return_exceptions=True)
    with contextlib.suppress(Exception):  # a connection that never came up has nothing to close
        await asyncio.wait_for(socket_mode.close_async(), 5)
    await responses.close()
    if runner is not None:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _agent_steps(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], queue: JobQueue
) -> AsyncIterator[tuple[wiring.Parts, Callable[[], bool], Path | None]]:
    """Run the agent steps (in worker processes, or here with `workers.processes: 0`) for
    the block; yields the parts, whether the steps are ready, and where worker processes
    keep metrics."""
    count = settings.workers.processes
    if not count:
        pool = WorkerPool(settings, queue)
        parts = wiring.build(settings, sessions, queue, pool)
        async with wiring.running_pool(parts, pool):
            yield parts, (lambda: pool.claiming), None
        return
    with tempfile.TemporaryDirectory(prefix="fixbot-metrics-") as metrics_dir:
        workers = WorkerProcesses(settings, count, Path(metrics_dir))
        parts = wiring.build(settings, sessions, queue, workers)
        workers.start()
        try:
            yield parts, (lambda: workers.alive), Path(metrics_dir)
        finally:
            await workers.stop()


def _warn_missing_parts(settings: Settings) -> None:
    """Say at start what will not work, rather than at the first task."""
    if settings.anthropic_api_key is None and settings.claude_code_oauth_token is None:
        log.warning(
            "neither ANTHROPIC_API_KEY nor CLAUDE_CODE_OAUTH_TOKEN is set: agent steps work "
            "only if Claude Code is logged in by other means"
        )
    if not settings.repos:
        log.warning("no repos in %s: /fix has no repository to work in", settings.fixbot_config)


def main() -> int:
    Path("data").mkdir(exist_ok=True)
    return wiring.run_process(serve)

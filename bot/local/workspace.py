"""`fixbot local [--demo]`: Fixbot connected to a Slack-like workspace it serves itself.

The same Bolt app as with Slack, over a real Socket Mode WebSocket and the same Web API
calls, against `LocalSlack` mounted on Fixbot's own HTTP server under `/local`, where the
page (`bot.local.page`) shows it. Without a model key or a repository, or with `--demo`,
the bundled sample repository and the scripted model (`bot.local.demo`) do the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import shutil
import sys
import time
from pathlib import Path

from pydantic import SecretStr

from bot import service
from bot.config import Settings, load_settings, scrub_environment
from bot.errors import ConfigError
from bot.local.demo import EXAMPLE_COMMAND, DemoModel, demo_repo, make_sample_repository
from bot.local.page import PageSettings, Person, add_page
from bot.local.slack import LocalSlack
from bot.logs import setup_logging
from bot.redact import Redactor

PEOPLE = (
    Person("U_ADA", "Ada", "requester"),
    Person("U_BEN", "Ben", "approver"),
    Person("U_CY", "Cy", "someone else"),
)
APPROVERS = ["U_BEN"]  # fixbot.yml's approvers are Slack ids nobody here has
CHANNELS = {"C_GENERAL": "general"}
BOT_TOKEN, APP_TOKEN = "xoxb-local", "xapp-local"
MOUNT = "/local"


def main(demo: bool = False) -> int:
    """Start the local workspace; 0 after a stop signal, 2 when a setting is wrong."""
    try:
        settings = load_settings(slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN)
    except ConfigError as error:
        print(f"fixbot: {error}", file=sys.stderr)
        return 2
    if not settings.fixbot_http_port:
        print(
            "fixbot: the local workspace is served on FIXBOT_HTTP_PORT, which is 0 (off); "
            "unset it (8080) or choose a port.",
            file=sys.stderr,
        )
        return 2
    reason = None if demo else _demo_reason(settings)
    if reason is not None:
        print(f"fixbot: {reason}, so this is the demo (sample repository, scripted model).")
    scrub_environment()
    setup_logging(settings.log_format, Redactor(settings.secret_values()))
    Path("data").mkdir(exist_ok=True)
    asyncio.run(serve_local(settings, demo=demo or reason is not None))
    return 0


async def serve_local(settings: Settings, *, demo: bool) -> None:
    """Serve the local workspace and Fixbot connected to it, until a stop signal."""
    host = settings.fixbot_http_host
    reachable = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    url = f"http://{reachable}:{settings.fixbot_http_port}{MOUNT}"
    slack = LocalSlack(
        public_url=url,
        channels=CHANNELS,
        bot_token=BOT_TOKEN,
        app_token=APP_TOKEN,
        first_ts=time.time(),
    )
    settings = settings.model_copy(update={"slack_api_url": slack.api_url, "approvers": APPROVERS})
    async with contextlib.AsyncExitStack() as stack:
        if demo:
            settings = await _demo_settings(settings, stack)
        else:
            settings = await _local_database(settings)
        example = EXAMPLE_COMMAND if demo else f"/fix what is wrong repo:{settings.repos[0].name}"
        page = PageSettings(PEOPLE, tuple(APPROVERS), tuple(settings.repos), demo, example)
        mounted = slack.make_app()
        add_page(mounted, slack, page)
        print(f"Fixbot's local workspace: {url}/  (Ctrl-C stops it)", flush=True)
        try:
            await service.serve(settings, mounts={MOUNT: mounted}, workspace=f"local ({url}/)")
        finally:
            await slack.close()


async def _local_database(settings: Settings) -> Settings:
    """A database of the local workspace's own, fresh each start: its messages live in
    memory, and a shared queue would hand it jobs whose threads are in a real Slack."""
    root = await asyncio.to_thread(_fresh_directory, settings.fixbot_workdir.resolve() / "local")
    return settings.model_copy(
        update={"database_url": SecretStr(f"sqlite+aiosqlite:///{root}/fixbot.db")}
    )


async def _demo_settings(settings: Settings, stack: contextlib.AsyncExitStack) -> Settings:
    """Settings for the demo: a fresh sample repository, database and workdir each start."""
    root = await asyncio.to_thread(_fresh_directory, settings.fixbot_workdir.resolve() / "demo")
    origin = await make_sample_repository(root)
    test_command = f"{shlex.quote(sys.executable)} -m unittest"
    model = await stack.enter_async_context(DemoModel(test_command))
    return settings.model_copy(
        update={
            "repos": [demo_repo(test_command, origin.as_uri())],
            "database_url": SecretStr(f"sqlite+aiosqlite:///{root}/fixbot.db"),
            "fixbot_workdir": root / "work",
            "anthropic_api_key": SecretStr("sk-ant-demo-scripted-model"),
            "claude_code_oauth_token": None,
            "anthropic_base_url": model.base_url,
            # The demo's "pull request" is a branch in the sample's own bare repository.
            "sentry_auth_token": None,
            "github_token": None,
            "jira_url": None,
            "alert_channels": [],
            "mcp_servers": {},
        }
    )


def _fresh_directory(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _demo_reason(settings: Settings) -> str | None:
    """Why real work cannot run here, if it cannot."""
    if not settings.repos:
        return "no repositories in fixbot.yml"
    if settings.anthropic_api_key is None and settings.claude_code_oauth_token is None:
        return "no ANTHROPIC_API_KEY (or CLAUDE_CODE_OAUTH_TOKEN)"
    return None

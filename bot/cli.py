"""The `fixbot` command: run the bot, check its set-up, and look after tasks from a terminal.

    fixbot run                      # the same as `python app.py`
    fixbot worker                   # run agent steps from the queue (app.py starts its own)
    fixbot local [--demo]           # Fixbot in a local workspace in the browser, no Slack needed
    fixbot doctor                   # one line per setting and dependency, and what to do
    fixbot tasks list [--state S] [--limit N]
    fixbot tasks show ID            # the task, its events, its agent runs and spend
    fixbot tasks create REF [--channel C]
    fixbot tasks requeue ID         # a failed task goes back to the queue
    fixbot tasks cancel ID
    fixbot tasks transcript ID [--step planning|execution]

Task commands go through the workflow's own transitions, exactly as Slack's buttons do.
Errors a person can fix (an unknown id, a task in the wrong state, a bad reference) are
one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slack_sdk.errors import SlackApiError
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.config import HINTS, Settings, blank_secrets, load_settings, scrub_environment
from bot.errors import ConfigError
from bot.models import State
from bot.redact import Redactor
from repos import process
from repos.config import RepoConfig
from repos.errors import FixbotError
from storage.jobs import JobKind
from storage.tables import AgentRun, FixWatch, Job, Task, TaskEvent

Sessions = async_sessionmaker[AsyncSession]

ACTOR = "cli"  # who task_events say acted, for what is done from here
CHECK_TIMEOUT_S = 20.0
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """Something the person can fix; printed as one line, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    """The `fixbot` console script."""
    args = _parser().parse_args(argv)
    if args.command == "run":
        from bot import service

        return service.main()
    if args.command == "worker":
        from bot import workers

        return workers.main(from_app=args.from_app)
    if args.command == "local":
        from bot.local import workspace

        return workspace.main(demo=args.demo)
    try:
        if args.command == "doctor":
            return asyncio.run(doctor())
        return asyncio.run(_tasks(args))
    except (CliError, FixbotError) as error:
        print(f"fixbot: {_one_line(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except SlackApiError as error:
        print(f"fixbot: Slack answered {error.response.get('error')}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fixbot", description="Fixbot: production errors into reviewed pull requests."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run", help="connect to Slack and serve (the same as python app.py)")
    worker = commands.add_parser(
        "worker", help="run agent steps from the queue, beside an app with workers.processes: 0"
    )
    # Set by `python app.py` for its own workers: settings on stdin, stop when it goes.
    worker.add_argument("--from-app", action="store_true", help=argparse.SUPPRESS)
    local = commands.add_parser("local", help="serve a local workspace in the browser and connect")
    local.add_argument("--demo", action="store_true", help="a sample repository, a scripted model")
    commands.add_parser("doctor", help="check every setting and dependency")
    tasks = commands.add_parser("tasks", help="list, show and act on tasks")
    actions = tasks.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="recent tasks, newest first")
    listing.add_argument("--state", choices=[state.value for state in State])
    listing.add_argument("--limit", type=int, default=20)
    actions.add_parser("show", help="a task, its events, agent runs and spend").add_argument(
        "id", type=int
    )
    create = actions.add_parser("create", help="like /fix REF, from a terminal")
    create.add_argument("ref", nargs="+", help="Sentry short id or URL, Jira key, issue URL, …")
    create.add_argument("--channel", help="where the thread goes (default: first alert channel)")
    actions.add_parser("requeue", help="send a failed task back to the queue").add_argument(
        "id", type=int
    )
    actions.add_parser("cancel", help="stop a task wherever it is").add_argument("id", type=int)
    transcript = actions.add_parser("transcript", help="a step's Claude Code session")
    transcript.add_argument("id", type=int)
    transcript.add_argument("--step", choices=["planning", "execution"])
    return parser


# ---------------------------------------------------------------------------- doctor


@dataclass(frozen=True)
class Check:
    """One line of `fixbot doctor`: ok True (✓), False (✗) or None (skipped)."""

    ok: bool | None
    name: str
    detail: str

    def __str__(self) -> str:
        mark = {True: "✓", False: "✗", None: "–"}[self.ok]
        return f"{mark} {self.name}: {self.detail}"


async def doctor() -> int:
    """Print one line per check; 0 when none failed."""
    failed = False
    async for check in _checks():
        print(check, flush=True)
        failed |= check.ok is False
    return EXIT_FAILED if failed else EXIT_OK


async def _checks() -> AsyncIterator[Check]:
    settings: Settings | None = None
    try:
        settings = load_settings()
    except ConfigError as error:
        yield Check(False, "settings", _one_line(str(error)))
    else:
        where = settings.fixbot_config if settings.fixbot_config.is_file() else "no fixbot.yml"
        yield Check(True, "settings", f"loaded ({where}; repositories: {len(settings.repos)})")
    blank = blank_secrets()
    scrub_environment()
    yield await _check_git()
    yield await _check_claude(settings.claude_cli_path if settings else None)
    if settings is None:
        for name in ("slack bot token", "slack app token", "database", "repositories"):
            yield Check(None, name, "skipped: fix the settings first")
        return
    redact = Redactor(settings.secret_values())
    yield await _check_sandbox(settings)
    yield _check_claude_credentials(settings)
    for name, probe in (
        ("slack bot token", check_slack_bot),
        ("slack app token", check_slack_app),
        ("database", check_database),
    ):
        yield await _guarded(name, probe(settings), redact)
    if not settings.repos:
        yield Check(False, "repositories", "none configured: add `repos:` to fixbot.yml")
    for repo in settings.repos:
        check = await _guarded(
            f"repo {repo.name}", _check_repo(settings, repo.name, repo.clone_url), redact
        )
        yield check
        if repo.setup_command and check.ok:
            yield await _check_setup(settings, repo, redact)
    async for check in _check_services(settings, redact):
        yield check
    yield _check_webhooks(settings, blank)


async def _guarded(name: str, probe: Awaitable[Check], redact: Callable[[str], str]) -> Check:
    """Run a check; whatever it raises becomes its ✗ line, never a traceback."""
    try:
        check = await asyncio.wait_for(probe, CHECK_TIMEOUT_S * 2)
    except TimeoutError:
        return Check(False, name, f"no answer within {CHECK_TIMEOUT_S * 2:.0f} s")
    except Exception as error:  # a check that broke is a failed check, said in one line
        return Check(False, name, redact(f"{type(error).__name__}: {_one_line(str(error))}"))
    return Check(check.ok, check.name, redact(check.detail))


async def _check_git() -> Check:
    if shutil.which("git") is None:
        return Check(False, "git", "not found on PATH: install git (apt-get install git)")
    code, output = await _run(["git", "--version"])
    if code != 0:
        return Check(False, "git", f"`git --version` failed: {output}")
    return Check(True, "git", output)


async def _check_claude(cli_path: str | None) -> Check:
    try:
        from agents.runner import claude_cli  # the SDK loads slowly: only when checked

        path = claude_cli(cli_path)
    except Exception as error:  # the SDK's CLINotFoundError, or a broken install
        return Check(
            False,
            "claude code",
            f"{_one_line(str(error))}: reinstall claude-agent-sdk or set CLAUDE_CLI_PATH",
        )
    with tempfile.TemporaryDirectory(prefix="fixbot-doctor-") as home:
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": home,
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        code, output = await _run([path, "--version"], env=env)
    if code != 0:
        return Check(
            False, "claude code", f"`{path} --version` failed ({output}): check CLAUDE_CLI_PATH"
        )
    return Check(True, "claude code", f"{output} ({path})")


async def _check_sandbox(settings: Settings) -> Check:
    from repos.sandbox import NO_SANDBOX_HELP, Sandbox

    if settings.sandbox == "off":
        return Check(
            None,
            "sandbox",
            "OFF in fixbot.yml: agents and test runs are NOT confined; remove `sandbox: off` "
            "once bubblewrap works here",
        )
    problem = await Sandbox(bwrap=settings.fixbot_bwrap).problem()
    if problem is not None:
        return Check(False, "sandbox", f"{problem}: agents are refused until you {NO_SANDBOX_HELP}")
    return Check(True, "sandbox", "bubblewrap makes a sandbox; agents and test runs are confined")


def _check_claude_credentials(settings: Settings) -> Check:
    if settings.anthropic_api_key or settings.claude_code_oauth_token:
        which = "ANTHROPIC_API_KEY" if settings.anthropic_api_key else "CLAUDE_CODE_OAUTH_TOKEN"
        base = f" via {settings.anthropic_base_url}" if settings.anthropic_base_url else ""
        return Check(True, "claude credentials", f"{which} is set{base}")
    return Check(
        False,
        "claude credentials",
        "neither ANTHROPIC_API_KEY nor CLAUDE_CODE_OAUTH_TOKEN is set: set one "
        "(an API key from console.anthropic.com, or `claude setup-token`)",
    )


async def check_slack_bot(settings: Settings) -> Check:
    from slack_sdk.web.async_client import AsyncWebClient

    client = AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        timeout=int(CHECK_TIMEOUT_S),
    )
    try:
        auth = await client.auth_test()
    except SlackApiError as error:
        return Check(
            False,
            "slack bot token",
            f"Slack refused SLACK_BOT_TOKEN ({error.response.get('error')}): "
            f"set it to {HINTS['SLACK_BOT_TOKEN']}",
        )
    except Exception as error:  # the network: aiohttp, DNS, TLS, timeouts
        return _unreachable("slack bot token", settings.slack_api_url, error, "SLACK_API_URL")
    return Check(True, "slack bot token", f"auth.test: @{auth.get('user')} in {auth.get('team')}")


async def check_slack_app(settings: Settings) -> Check:
    from slack_sdk.web.async_client import AsyncWebClient

    client = AsyncWebClient(base_url=settings.slack_api_url, timeout=int(CHECK_TIMEOUT_S))
    try:
        await client.apps_connections_open(app_token=settings.slack_app_token.get_secret_value())
    except SlackApiError as error:
        return Check(
            False,
            "slack app token",
            f"Slack refused SLACK_APP_TOKEN ({error.response.get('error')}): "
            f"set it to {HINTS['SLACK_APP_TOKEN']}",
        )
    except Exception as error:
        return _unreachable("slack app token", settings.slack_api_url, error, "SLACK_API_URL")
    return Check(True, "slack app token", "apps.connections.open: Socket Mode can connect")


async def check_database(settings: Settings) -> Check:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from storage.db import MIGRATIONS, create_engine, ping

    url = make_url(settings.database_url.get_secret_value())
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        if not await asyncio.to_thread(Path(url.database).exists):
            return Check(True, "database", f"{shown}: no file yet; Fixbot creates it on start")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    engine = create_engine(url.render_as_string(hide_password=False))
    try:
        if not await asyncio.wait_for(ping(engine), CHECK_TIMEOUT_S):
            return Check(
                False, "database", f"{shown} does not answer: check DATABASE_URL and the server"
            )
        async with engine.connect() as connection:
            current = await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()
    if current == head:
        return Check(True, "database", f"{shown}: schema at {head}")
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    if current is not None and current not in known:
        return Check(
            False,
            "database",
            f"{shown} is at revision {current}, which this Fixbot does not know: "
            "run the Fixbot version that wrote it, or a newer one",
        )
    return Check(
        True,
        "database",
        f"{shown}: schema at {current or 'nothing'}; Fixbot migrates to {head} on start",
    )


async def _check_repo(settings: Settings, name: str, clone_url: str) -> Check:
    from repos.workspace import GitError, auth_config, git

    token = settings.github_token.get_secret_value() if settings.github_token else None
    with tempfile.TemporaryDirectory(prefix="fixbot-doctor-") as cwd:
        try:
            await git(
                "ls-remote",
                clone_url,
                "HEAD",
                cwd=Path(cwd),
                timeout=CHECK_TIMEOUT_S,
                extra_config=auth_config(clone_url, token),
            )
        except GitError as error:
            return Check(
                False,
                f"repo {name}",
                f"{clone_url} is not reachable ({_one_line(str(error))}): check clone_url in "
                "fixbot.yml and that GITHUB_TOKEN may read it",
            )
    return Check(True, f"repo {name}", f"{clone_url} answers")


async def _check_setup(settings: Settings, repo: RepoConfig, redact: Callable[[str], str]) -> Check:
    """Run the repo's setup_command once (it can take minutes, so not under CHECK_TIMEOUT_S)."""
    from repos.environment import prepare_environment
    from repos.sandbox import Sandbox
    from repos.workspace import Workspaces

    name = f"setup {repo.name}"
    workspaces = Workspaces(settings.fixbot_workdir.resolve())
    try:
        worktree = await workspaces.prepare(repo, "fixbot-doctor/setup")
        try:
            environment = await prepare_environment(
                repo,
                worktree.path,
                workspaces.root / "envs",
                within_s=settings.limits.setup_timeout_s,
                sandbox=Sandbox(settings.sandbox, bwrap=settings.fixbot_bwrap),
            )
        finally:
            await workspaces.remove(worktree)
    except FixbotError as error:
        output = getattr(error, "output", None) or ""
        tail = f" Last output: {_one_line(output[-300:])}" if output else ""
        return Check(False, name, redact(f"{_one_line(str(error))}{tail}"))
    assert environment is not None
    took = (
        f"ran in {environment.setup_s:.1f} s"
        if environment.setup_s
        else "already set up for these files (cached)"
    )
    return Check(True, name, f"{took}: {environment.path}")


async def _check_services(settings: Settings, redact: Callable[[str], str]) -> AsyncIterator[Check]:
    from bot.integrations.github import GitHubClient
    from bot.integrations.jira import JiraClient
    from bot.integrations.sentry import SentryClient

    if settings.sentry_auth_token and settings.sentry_org:
        sentry = SentryClient(
            settings.sentry_url, settings.sentry_auth_token.get_secret_value(), settings.sentry_org
        )
        yield await _service("sentry", sentry, "SENTRY_AUTH_TOKEN and SENTRY_ORG", redact)
    else:
        yield Check(None, "sentry", "skipped: not configured (SENTRY_AUTH_TOKEN, SENTRY_ORG)")
    if settings.github_token:
        github = GitHubClient(settings.github_api_url, settings.github_token.get_secret_value())
        yield await _service("github", github, "GITHUB_TOKEN and GITHUB_API_URL", redact)
    else:
        yield Check(None, "github", "skipped: not configured (GITHUB_TOKEN)")
    if settings.jira_url and settings.jira_email and settings.jira_api_token:
        jira = JiraClient(
            settings.jira_url, settings.jira_email, settings.jira_api_token.get_secret_value()
        )
        yield await _service("jira", jira, "JIRA_URL, JIRA_EMAIL and JIRA_API_TOKEN", redact)
    else:
        yield Check(None, "jira", "skipped: not configured (JIRA_URL, JIRA_EMAIL, JIRA_API_TOKEN)")


def _check_webhooks(settings: Settings, blank: list[str]) -> Check:
    """Which webhooks are signed, and that empty secrets and GitHub approvals are off."""
    secrets = {
        "sentry": ("SENTRY_WEBHOOK_SECRET", settings.sentry_webhook_secret),
        "github": ("GITHUB_WEBHOOK_SECRET", settings.github_webhook_secret),
        "jira": ("JIRA_WEBHOOK_SECRET", settings.jira_webhook_secret),
    }
    on = [name for name, (_, secret) in secrets.items() if secret is not None]
    empty = [variable for variable, _ in secrets.values() if variable in blank]
    approvals = (
        f"GitHub approvals by {', '.join(settings.github_approvers)}"
        if settings.github_approvers
        else "GitHub approvals off (no github_approvers)"
    )
    detail = f"signed: {', '.join(on) or 'none'}; the others answer 401; {approvals}"
    if empty:
        return Check(
            False,
            "webhooks",
            f"{', '.join(empty)} set but empty, which counts as unset (401): set a long random "
            f"value or remove the variable; {detail}",
        )
    return Check(True if on else None, "webhooks", detail)


async def _service(name: str, client: Any, variables: str, redact: Callable[[str], str]) -> Check:
    try:
        who = await asyncio.wait_for(client.check(), CHECK_TIMEOUT_S)
    except Exception as error:  # IntegrationError carries the vendor's words; or the network
        detail = _one_line(str(error)) or type(error).__name__
        return Check(False, name, redact(f"{detail}: check {variables}"))
    finally:
        await client.aclose()
    return Check(True, name, redact(f"authenticated ({who})"))


def _unreachable(name: str, url: str, error: Exception, variable: str) -> Check:
    reason = _one_line(str(error)) or type(error).__name__
    return Check(False, name, f"cannot reach {url} ({reason}): check {variable} and the network")


async def _run(command: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a short command with a timeout; returns its exit status and first output line."""
    try:
        result = await process.run(command, env=env, timeout=CHECK_TIMEOUT_S, merge_stderr=True)
    except OSError as error:
        return 127, str(error)
    if result.timed_out:
        return 124, f"no answer within {CHECK_TIMEOUT_S:.0f} s"
    lines = result.stdout.strip().splitlines()
    return result.exit_code, lines[0] if lines else ""


# ---------------------------------------------------------------------------- tasks


async def _tasks(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except ConfigError as error:
        raise CliError(str(error)) from None
    scrub_environment()
    async with _database(settings) as sessions:
        if args.action == "list":
            await _list(sessions, args.state, args.limit)
        elif args.action == "show":
            await _show(sessions, args.id)
        elif args.action == "transcript":
            await _transcript(settings, sessions, args.id, args.step)
        else:
            await _act(settings, sessions, args)
    return EXIT_OK


@contextlib.asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[Sessions]:
    from storage.db import create_engine, migrate, sessionmaker

    engine = create_engine(settings.database_url.get_secret_value())
    try:
        await migrate(engine)  # as the app does on start: the CLI may come first
        yield sessionmaker(engine)
    finally:
        await engine.dispose()


async def _list(sessions: Sessions, state: str | None, limit: int) -> None:
    query = select(Task).order_by(Task.id.desc()).limit(max(1, limit))
    if state is not None:
        query = query.where(Task.state == state)
    async with sessions() as session:
        tasks = list(await session.scalars(query))
    if not tasks:
        print("no tasks" + (f" in state {state}" if state else ""))
        return
    rows = [
        [
            str(task.id),
            task.state,
            task.ref_key[:30],
            task.repo or "-",
            f"${task.cost_usd:.2f}",
            _when(task.created_at),
            task.title[:60],
        ]
        for task in tasks
    ]
    _table(["ID", "STATE", "REF", "REPO", "SPEND", "CREATED", "TITLE"], rows)


async def _show(sessions: Sessions, task_id: int) -> None:
    async with sessions() as session:
        task = await _task(session, task_id)
        events = list(
            await session.scalars(
                select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)
            )
        )
        runs = list(
            await session.scalars(
                select(AgentRun).where(AgentRun.task_id == task_id).order_by(AgentRun.id)
            )
        )
        watches = list(
            await session.scalars(
                select(FixWatch).where(FixWatch.task_id == task_id).order_by(FixWatch.id)
            )
        )
        follow_ups = list(
            await session.scalars(
                select(Job)
                .where(Job.task_id == task_id, Job.kind == JobKind.AFTER_MERGE)
                .order_by(Job.id)
            )
        )
    print(f"Task {task.id} · {task.state} · {task.ref_kind} {task.ref_key}")
    print(f"  title:        {task.title}")
    facts = {
        "repository": task.repo,
        "reference": task.ref_url,
        "branch": task.branch,
        "pull request": task.pr_url,
        "requested by": task.requested_by,
        "decided by": task.decided_by,
        "thread": f"{task.channel_id} {task.thread_ts}" if task.thread_ts else task.channel_id,
        "plan version": str(task.plan_version) if task.plan_version else None,
        "failure": task.failure,
        "created": _when(task.created_at),
        "updated": _when(task.updated_at),
    }
    for label, value in facts.items():
        if value:
            print(f"  {label + ':':<13} {_one_line(value)}")
    print("\nEvents")
    for event in events:
        move = f"{event.from_state or '·'} → {event.to_state}"
        detail = f"  {json.dumps(event.detail)}" if event.detail else ""
        print(f"  {_when(event.at)}  {move:<32} by {event.actor or 'fixbot'}{detail}")
    print("\nAgent runs")
    if not runs:
        print("  none")
    for run in runs:
        print(
            f"  {_when(run.started_at)}  {run.step:<9} {run.outcome:<16} ${run.cost_usd:.4f}  "
            f"{run.input_tokens} in / {run.output_tokens} out tokens  {run.turns} turns  "
            f"{run.duration_s:.1f} s  session {run.session_id or '-'}"
        )
        if run.error:
            print(f"      error: {_one_line(run.error)}")
    spend = sum(run.cost_usd for run in runs)
    print(f"\nTotal spend: ${spend:.4f} over {len(runs)} agent run(s)")
    if watches:
        _show_after_merge(watches, follow_ups)


AFTER_MERGE_JOBS_SHOWN = 5  # a day's watch is a job an hour


def _show_after_merge(watches: list[FixWatch], jobs: list[Job]) -> None:
    """The merged fix: what Sentry and Jira were told, the watch, and its scheduled jobs."""
    print("\nAfter the merge")
    for watch in watches:
        print(f"  {_when(watch.merged_at)}  {watch.pr_url} merged by {watch.merged_by or '?'}")
        facts = {
            "status": watch.status,
            "merge commit": watch.merge_commit,
            "sentry issue": watch.sentry_issue,
            "resolved": watch.resolved_how,
            "release": watch.release,
            "live since": _when(watch.released_at) if watch.released_at else None,
            "events before": watch.events_before,
            "events since": watch.events_since,
            "checks": watch.checks,
            "last check": _when(watch.checked_at) if watch.checked_at else None,
            "window ends": _when(watch.window_ends_at),
            "planned again": watch.replan_task_id and f"task {watch.replan_task_id}",
        }
        for label, value in facts.items():
            if value is not None:
                print(f"    {label + ':':<14} {_one_line(str(value))}")
    shown = jobs[-AFTER_MERGE_JOBS_SHOWN:]
    print(f"  {len(jobs)} job(s), one a step; the last {len(shown)}:")
    for job in shown:
        error = f"  {_one_line(job.last_error)}" if job.last_error else ""
        print(f"  job {job.id:<5} {job.status:<9} runs after {_when(job.run_after)}{error}")


async def _act(settings: Settings, sessions: Sessions, args: argparse.Namespace) -> None:
    """create / requeue / cancel: through the workflow, as Slack's buttons go."""
    from bot.refs import parse_reference
    from bot.tasks import Decision

    if args.action == "create":
        ref = parse_reference(" ".join(args.ref), settings)
        channel = args.channel or next(iter(settings.alert_channels), None)
        if channel is None:
            raise CliError("say where the thread goes: --channel C…, or set alert_channels")
    async with _workflow(settings, sessions) as workflow:
        if args.action == "create":
            task = await workflow.request_fix(ref, channel=channel, user=ACTOR)
            print(f"created task {task.id} ({ref.kind} {ref.key}) in {channel}; planning is queued")
            return
        decide = workflow.retry if args.action == "requeue" else workflow.cancel
        try:
            task = await decide(Decision(args.id, ACTOR))
        except SlackApiError as error:  # the transition is made; only the thread note failed
            print(
                f"fixbot: task {args.id} was {args.action}ed, but Slack refused the note in its "
                f"thread ({error.response.get('error')})",
                file=sys.stderr,
            )
            return
        if task.state == State.CANCELLED:
            print(f"task {task.id} is cancelled")
        else:
            print(f"task {task.id} is {task.state} again; its step is queued")


@contextlib.asynccontextmanager
async def _workflow(settings: Settings, sessions: Sessions) -> AsyncIterator[Any]:
    from bot import wiring
    from bot.seams import NoWorkers

    queue = wiring.job_queue(settings, sessions, f"{socket.gethostname()}-{ACTOR}")
    parts = wiring.build(settings, sessions, queue, NoWorkers())
    try:
        yield parts.workflow
    finally:
        await parts.aclose()


async def _transcript(
    settings: Settings, sessions: Sessions, task_id: int, step: str | None
) -> None:
    async with sessions() as session:
        await _task(session, task_id)
        query = select(AgentRun).where(AgentRun.task_id == task_id).order_by(AgentRun.id)
        if step is not None:
            query = query.where(AgentRun.step == step)
        runs = [run for run in await session.scalars(query) if run.session_id]
    if not runs:
        raise CliError(f"task {task_id} has no {step or 'agent'} run with a Claude Code session")
    homes = settings.agent_home  # each task's HOME is a folder in it
    redact = Redactor(settings.secret_values())
    for number, run in enumerate(runs):
        if number:
            print()
        print(
            f"=== {run.step} · session {run.session_id} · {run.outcome} · ${run.cost_usd:.4f} · "
            f"{run.turns} turns · {run.duration_s:.1f} s"
        )
        path = next(homes.rglob(f"{run.session_id}.jsonl"), None)
        if path is None:
            print(f"(no transcript under {homes}: it lives on the machine that ran the step)")
            continue
        for line in _render_transcript(path):
            print(redact(line))


def _render_transcript(path: Path) -> Iterator[str]:
    """The conversation in a session file: prompts, text, tool calls and their results."""
    for raw in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if entry.get("type") not in ("user", "assistant") or entry.get("isMeta"):
            continue
        message = entry.get("message") or {}
        role = message.get("role", entry["type"])
        content = message.get("content")
        if isinstance(content, str):
            yield f"[{role}] {_clip(content, 2000)}"
            continue
        for block in content or []:
            kind = block.get("type")
            if kind == "text" and block.get("text", "").strip():
                yield f"[{role}] {_clip(block['text'], 2000)}"
            elif kind == "tool_use":
                arguments = json.dumps(block.get("input", {}), ensure_ascii=False)
                yield f"  → {block.get('name')} {_clip(arguments, 300)}"
            elif kind == "tool_result":
                mark = "error: " if block.get("is_error") else ""
                yield f"  ← {mark}{_clip(_result_text(block), 300)}"


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content or "")


async def _task(session: AsyncSession, task_id: int) -> Task:
    task = await session.scalar(select(Task).where(Task.id == task_id))
    if task is None:
        raise CliError(f"there is no task {task_id}")
    return task


# ---------------------------------------------------------------------------- text


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "-"


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _clip(text: str, limit: int) -> str:
    text = " ⏎ ".join(line for line in text.strip().splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())

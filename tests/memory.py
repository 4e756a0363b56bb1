"""In-memory twins of the task machinery's seams (bot/seams.py), and `Machine`: the task
machinery built on them with a real SQLite database, to run in-process in milliseconds.

    async with build_machine(tmp_path) as machine:  # or the `machine` fixture (conftest.py)
        task = await machine.workflow.request_fix(ref, channel="C1", user="U_ALICE")
        await machine.run_next_job()  # planning, with the scripted agent
        machine.threads.texts(task.thread_ts)  # what the thread says
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from world import plan_data

from agents.runner import AgentEnvironment, AgentStep, EventHandler, SessionHandler, StepResult
from bot.config import Settings
from bot.conversation import Conversation
from bot.jobs import Outcome
from bot.redact import Redactor
from bot.sources import Sources
from bot.tasks import Workflow
from bot.views import Message
from bot.wiring import conversation_around
from repos.config import RepoConfig
from repos.environment import RepoEnvironment
from repos.verify import CommandResult, Verification
from repos.workspace import Worktree
from storage.db import create_engine, migrate, sessionmaker
from storage.jobs import JobKind
from storage.queue import JobQueue
from storage.tables import Job

REPO = "acme/shop"


@dataclass
class Posted:
    channel: str
    ts: str
    thread_ts: str | None
    text: str  # the newest text: edits replace it


class MemoryThreads:
    """`Threads` that keeps every message; a ts counts up from 1000.000001."""

    def __init__(self) -> None:
        self.messages: dict[str, Posted] = {}
        self.uploads: list[tuple[str, str, str]] = []  # channel, thread_ts, content
        self._ts = itertools.count(1)

    async def post(self, channel: str, message: Message, *, thread_ts: str | None = None) -> str:
        ts = f"1000.{next(self._ts):06d}"
        self.messages[ts] = Posted(channel, ts, thread_ts, message.text)
        return ts

    async def update(self, channel: str, ts: str, message: Message) -> None:
        self.messages[ts].text = message.text

    async def ephemeral(
        self, channel: str, user: str, text: str, *, thread_ts: str | None = None
    ) -> None:
        pass

    async def upload(
        self, channel: str, thread_ts: str, *, filename: str, content: str, title: str
    ) -> None:
        self.uploads.append((channel, thread_ts, content))

    async def publish_home(self, user: str, view: dict[str, Any]) -> None:
        pass

    async def permalink(self, channel: str, ts: str) -> str | None:
        return f"https://slack.test/{channel}/{ts}"

    async def replies(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        return [{"ts": m.ts, "text": m.text} for m in self.texts_of(thread_ts)]

    def parents(self) -> list[Posted]:
        """The messages posted in the channel itself, not in a thread."""
        return [m for m in self.messages.values() if m.thread_ts is None]

    def texts_of(self, thread_ts: str) -> list[Posted]:
        return [m for m in self.messages.values() if thread_ts in (m.ts, m.thread_ts)]

    def texts(self, thread_ts: str | None) -> list[str]:
        """The thread's messages as they read now, the parent first."""
        assert thread_ts is not None
        return [m.text for m in self.texts_of(thread_ts)]


class ScriptedAgent:
    """`AgentRunner` whose steps succeed at once: planning returns `plan`, execution `done`.

    `plan` may be changed between steps; `outcome` makes the next step end otherwise.
    `errors` are raised by the next steps, one each, as the runner raises them; `hold`, an
    event, keeps steps running until it is set, and `cancelled` lists those stopped meanwhile.
    """

    def __init__(self) -> None:
        self.plan: dict[str, Any] | None = plan_data()
        self.outcome = "success"
        self.cost_usd = 0.25
        self.steps: list[AgentStep] = []
        self.errors: list[Exception] = []
        self.hold: asyncio.Event | None = None
        self.cancelled: list[AgentStep] = []
        self._sessions = itertools.count(1)

    async def __call__(
        self,
        step: AgentStep,
        env: AgentEnvironment,
        on_event: EventHandler | None = None,
        on_session: SessionHandler | None = None,
    ) -> StepResult:
        self.steps.append(step)
        session_id = step.resume_session_id or f"session-{next(self._sessions)}"
        if on_session is not None:
            await on_session(session_id)
        if self.errors:  # after the session starts, as an API error comes from Claude Code
            raise self.errors.pop(0)
        if self.hold is not None:
            try:
                await self.hold.wait()
            except asyncio.CancelledError:
                self.cancelled.append(step)
                raise
        return StepResult(
            session_id=session_id,
            outcome=self.outcome,  # type: ignore[arg-type]
            cost_usd=self.cost_usd,
            input_tokens=100,
            output_tokens=10,
            turns=1,
            duration_s=0.01,
            text="done",
            structured_output=self.plan if step.name == JobKind.PLANNING else None,
        )


def passing_run(command: str) -> CommandResult:
    return CommandResult(command=command, exit_code=0, output="1 passed", duration_s=0.01)


@dataclass
class MemoryRepos:
    """`Repos` on plain folders: no git; what was committed and pushed is kept in lists."""

    root: Path
    verification: Verification = field(
        default_factory=lambda: Verification(
            ok=True,
            reason="red then green",
            red=CommandResult(command="pytest", exit_code=1, output="1 failed", duration_s=0.01),
            green=passing_run("pytest"),
        )
    )
    commits: list[str] = field(default_factory=list)
    pushed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # what `changed_files` reports

    def worktree_path(self, branch: str) -> Path:
        return self.root / "worktrees" / branch.replace("/", "__")

    async def prepare(self, repo: RepoConfig, branch: str, base_commit: str | None) -> Worktree:
        path = self.worktree_path(branch)
        path.mkdir(parents=True, exist_ok=True)
        return Worktree(path, branch, base_commit or "base0000")

    async def remove(self, worktree: Worktree) -> None:
        self.removed.append(worktree.branch)

    async def cleanup(self, max_age: timedelta) -> list[Path]:
        return []

    async def environment(self, repo: RepoConfig, worktree: Path) -> RepoEnvironment | None:
        return None

    async def verify(
        self,
        repo: RepoConfig,
        worktree: Path,
        base_commit: str,
        environment: RepoEnvironment | None,
    ) -> Verification:
        return self.verification

    async def committed(self, worktree: Path, message: str) -> str | None:
        return "fix0000" if message in self.commits else None

    async def commit_all(self, worktree: Path, message: str, *, only: Sequence[str] = ()) -> str:
        self.commits.append(message)
        return f"commit{len(self.commits)}"

    async def discard_except(self, worktree: Path, keep: str) -> None:
        pass

    async def changed_files(self, worktree: Path, base_commit: str) -> list[str]:
        return list(self.changed)

    async def push(self, repo: RepoConfig, worktree: Path, branch: str) -> None:
        self.pushed.append(branch)


class MemoryJobs:
    """`JobControl` that counts wake-ups and remembers cancelled tasks."""

    def __init__(self) -> None:
        self.wakes = 0
        self.cancelled: list[int] = []

    def wake(self) -> None:
        self.wakes += 1

    def cancel_task(self, task_id: int) -> None:
        self.cancelled.append(task_id)


def memory_settings(**values: Any) -> Settings:
    base: dict[str, Any] = {
        "slack_bot_token": "xoxb-1",
        "slack_app_token": "xapp-1",
        "repos": [{"name": REPO, "clone_url": "https://git.test/acme/shop.git"}],
    }
    return Settings(_env_file=None, **{**base, **values})  # type: ignore[call-arg]


@dataclass
class Machine:
    """The task machinery on the in-memory seams and a real SQLite database."""

    workflow: Workflow
    sessions: async_sessionmaker[AsyncSession]
    queue: JobQueue
    threads: MemoryThreads
    agent: ScriptedAgent
    repos: MemoryRepos
    jobs: MemoryJobs
    conversation: Conversation  # alerts, replies, mentions, after a merge: as the app's

    async def run_next_job(self) -> tuple[Job, Outcome]:
        """Claim the next runnable planning or execution job and run it as the pool would."""
        job = await self.queue.claim([JobKind.PLANNING, JobKind.EXECUTION])
        assert job is not None, "no runnable job"
        outcome = await self.workflow.run_job(job)
        if outcome.until is not None:
            await self.queue.postpone(job.id, outcome.until)
        else:
            await self.queue.finish(job.id, outcome.status, outcome.reason)
        return job, outcome


@asynccontextmanager
async def build_machine(
    tmp_path: Path, *, threads: MemoryThreads | None = None, **settings: Any
) -> AsyncIterator[Machine]:
    """Build a `Machine` in `tmp_path` with these settings (and `threads`, a `MemoryThreads`
    of the test's own)."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'fixbot.db'}")
    await migrate(engine)
    sessions = sessionmaker(engine)
    queue = JobQueue(sessions, "test-worker")
    built = memory_settings(**settings)
    threads = threads or MemoryThreads()
    agent, jobs = ScriptedAgent(), MemoryJobs()
    repos = MemoryRepos(tmp_path)
    workflow = Workflow(
        built,
        sessions,
        queue,
        threads,
        jobs,
        sources=Sources(built, None, None, None),
        repos=repos,
        runner=agent,
        agent_env=AgentEnvironment(home=tmp_path / "agent-home"),
        github=None,
        jira=None,
        redactor=Redactor(built.secret_values()),
    )
    conversation = conversation_around(workflow)
    try:
        yield Machine(workflow, sessions, queue, threads, agent, repos, jobs, conversation)
    finally:
        await conversation.aclose()
        await workflow.aclose()
        await engine.dispose()

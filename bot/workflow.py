"""The task state machine: every transition, and the steps the job pool runs.

A transition checks the current state against `TRANSITIONS`, writes the new state and a
`task_events` row in one transaction (a conditional UPDATE, so two clicks can't both
win), and enqueues what follows. The task's state lives in the database, never in a
coroutine, so any replica can run any step and a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agents.ask import ASK_TOOL, ask_server
from agents.ask import SERVER as ASK_SERVER
from agents.environment import prepare_environment
from agents.execution import execution_step
from agents.permissions import PLAN_FILE
from agents.planning import PlanningInput, planning_step, read_plan, render_plan
from agents.runner import AgentEnvironment, AgentEvent, AgentStep, StepResult, run_agent_step
from agents.sandbox import Endpoint
from agents.verify import Verification, verify_fix
from agents.workspace import (
    Workspaces,
    Worktree,
    branch_name,
    changed_files,
    commit_all,
    committed,
    discard_except,
    push,
)
from bot import metrics, views
from bot.config import RepoConfig, Settings
from bot.dashboard import (
    Dashboard,
    HomeRefresher,
    load_board,
    spend_since,
    start_of_day,
    with_mine,
)
from bot.errors import (
    BadReference,
    DailyBudgetReached,
    InvalidTransition,
    Postponed,
    StepFailed,
    Transient,
)
from bot.faults import retried
from bot.integrations import IntegrationError
from bot.integrations.github import GitHubClient
from bot.integrations.jira import JiraClient
from bot.models import ACTIVE, FINISHED, TRANSITIONS, Plan, Reference, RefKind, State
from bot.policy import ApprovalPolicy
from bot.progress import StatusMessage
from bot.redact import Redactor
from bot.sources import Sources, TaskContext, UnmappedProject
from bot.thread import SlackThreads, SlackUnavailable
from storage.queue import QUEUED, JobQueue
from storage.queue import RUNNING as JOB_RUNNING
from storage.tables import AgentRun, Job, Question, Task, TaskEvent
from storage.triggers import forget_before

log = logging.getLogger(__name__)

PLANNING, EXECUTION = "planning", "execution"
RUNNING = "running"  # an agent_runs outcome while the step runs
RESUME_PROMPT = (
    "Fixbot was interrupted while you worked on this step. Continue from where you "
    "stopped: check what is already done (files, test runs) and finish the step."
)
SLACK_TRIGGER_MEMORY = timedelta(days=1)  # how long a Slack event id is kept to spot repeats
QUESTION_POLL_S = 0.5  # how often a waiting agent question looks for an answer
SKILLS = Path(__file__).resolve().parent.parent / "skills"

# Lower runs first: manual requests and fatal alerts, then errors, then the rest.
PRIORITY_URGENT, PRIORITY_ERROR, PRIORITY_OTHER = 0, 1, 2


def priority_for_level(level: str | None) -> int:
    """An alert's priority from Sentry's level; an alert with no level counts as an error."""
    if level == "fatal":
        return PRIORITY_URGENT
    return PRIORITY_ERROR if level in (None, "error") else PRIORITY_OTHER


@dataclass(frozen=True)
class Decision:
    """A person's click or command on a task."""

    task_id: int
    user: str
    plan_version: int | None = None  # for Approve/Reject: which plan the button belonged to


class Workflow:
    """Creates tasks, moves them between states, and runs their agent steps."""

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        queue: JobQueue,
        threads: SlackThreads,
        sources: Sources,
        workspaces: Workspaces,
        agent_env: AgentEnvironment,
        *,
        github: GitHubClient | None,
        jira: JiraClient | None,
        redactor: Redactor,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.queue = queue
        self.threads = threads
        self.sources = sources
        self.workspaces = workspaces
        self.agent_env = agent_env
        self.github = github
        self.jira = jira
        self.redact = redactor
        self.policy = ApprovalPolicy.from_settings(settings)
        # Set by the worker pool of this process: wake idle workers for a new job; cancel a
        # task's running step here at once (other replicas notice at their next heartbeat).
        self.job_added: Callable[[], None] = lambda: None
        self.task_stopped: Callable[[int], None] = lambda task_id: None
        # Republishes App Home, debounced, for people who opened it lately.
        self.home = HomeRefresher(self._home_board, self._home_view, self.threads.publish_home)

    # Triggers

    async def request_fix(
        self, ref: Reference, *, channel: str, user: str, thread_ts: str | None = None
    ) -> Task:
        """A person asked for a fix: the reference is looked up before anything is posted.

        One that names nothing usable raises BadReference (an answer for that person
        alone); a vendor that does not answer in time lets the task start regardless.
        """
        within_s = self.settings.limits.reference_timeout_s
        context = await self.sources.look_up(ref, within_s=within_s)
        return await self.create_task(
            ref, channel=channel, user=user, thread_ts=thread_ts, context=context
        )

    async def create_task(
        self,
        ref: Reference,
        *,
        channel: str,
        user: str | None,
        priority: int = PRIORITY_URGENT,
        thread_ts: str | None = None,
        context: TaskContext | None = None,
        branch: str | None = None,
    ) -> Task:
        """Record a task, open its thread, and queue its planning step.

        With `thread_ts` (an alert's thread) the task lives in that thread and Fixbot's
        parent message is a reply there (`parent_ts`); otherwise it starts a new thread.
        With `context` (the reference already looked up, or planning again) planning does
        not fetch it again.
        """
        if context is None:  # the planning step fetches it
            context = TaskContext(title=ref.key, repo=ref.repo, url=ref.url, text="")
        async with self.sessions.begin() as session:
            task = Task(
                state=State.QUEUED,
                ref_kind=ref.kind,
                ref_key=ref.key,
                ref_url=context.url,
                title=context.title[:150],
                repo=context.repo,
                context=context.text,
                branch=branch,
                requested_by=user,
                priority=priority,
                channel_id=channel,
                thread_ts=thread_ts,
            )
            session.add(task)
            await session.flush()
            session.add(TaskEvent(task_id=task.id, to_state=State.QUEUED, actor=user))
        self.home.changed()
        try:
            parent_ts = await self.threads.post(
                channel, views.parent_message(task), thread_ts=thread_ts
            )
        except Exception as error:
            # No thread, no job: the task ends here rather than waiting forever unseen.
            reason = str(error) if isinstance(error, SlackUnavailable) else f"Slack: {error}"
            await self.transition(task.id, State.FAILED, values={"failure": reason})
            if isinstance(error, SlackUnavailable):
                raise
            raise SlackUnavailable(
                f"Slack did not take the task's first message ({error}); nothing was started."
            ) from error
        placed = {"parent_ts": parent_ts} if thread_ts else {"thread_ts": parent_ts}
        async with self.sessions.begin() as session:
            await session.execute(update(Task).where(Task.id == task.id).values(**placed))
            job = JobQueue.enqueue(session, task.id, PLANNING, priority)
        for key, value in placed.items():
            setattr(task, key, value)
        await self._show_queue_place(task, job)
        self.job_added()
        return task

    # Decisions

    async def approve(self, decision: Decision) -> Task:
        """Approve the current plan: queue execution, replace the buttons with who and when."""
        async with self.sessions() as session:
            self.policy.check_approve(decision.user, await self._get(session, decision.task_id))
        return await self.approve_as(decision.task_id, decision.user, decision.plan_version)

    async def approve_as(self, task_id: int, actor: str, plan_version: int | None = None) -> Task:
        """Approve for someone already checked (here, or a GitHub approver): queue execution."""
        task = await self.transition(
            task_id,
            State.APPROVED,
            actor=actor,
            expect={State.AWAITING_APPROVAL},
            plan_version=plan_version,
            values={"decided_by": actor},
            enqueue=EXECUTION,
        )
        await self._close_plan(task, views.decision_note("Approved", actor, _now()))
        return task

    async def reject(self, decision: Decision) -> Task:
        """Reject the current plan: the task ends and nothing more is pushed."""
        self.policy.check_decide(decision.user)
        task = await self.transition(
            decision.task_id,
            State.REJECTED,
            actor=decision.user,
            expect={State.AWAITING_APPROVAL},
            plan_version=decision.plan_version,
            values={"decided_by": decision.user},
        )
        await self._close_plan(task, views.decision_note("Rejected", decision.user, _now()))
        await self._update_parent(task)
        await self._remove_worktree(task)
        return task

    async def approve_test_changes(self, decision: Decision) -> Task:
        """An approver accepts the fix's changes to how tests run: its draft pull request is
        marked ready. Asked of the same policy as a plan's approval."""
        async with self.sessions() as session:
            task = await self._get(session, decision.task_id)
            self.policy.check_approve(decision.user, task)
            done_before = await session.scalar(
                select(TaskEvent.id).where(
                    TaskEvent.task_id == task.id,
                    TaskEvent.detail["test_changes"].as_string() == "approved",
                )
            )
        if done_before is not None:
            raise InvalidTransition("These test changes were already approved; nothing changed.")
        if task.state != State.DONE or task.pr_number is None or self.github is None:
            raise InvalidTransition(_already(State(task.state)))
        repo = self._repo(task)
        owner, name = repo.name.split("/")
        async with self.sessions.begin() as session:
            session.add(
                TaskEvent(
                    task_id=task.id,
                    from_state=State.DONE,
                    to_state=State.DONE,
                    actor=decision.user,
                    detail={"test_changes": "approved"},
                )
            )
        await self.github.mark_ready_for_review(owner, name, task.pr_number)
        await self.threads.post(
            task.channel_id,
            views.test_changes_approved(decision.user, task.pr_url),
            thread_ts=task.thread_ts,
        )
        return task

    async def retry(self, decision: Decision) -> Task:
        """Run a failed task's step again: execution when a plan was approved, else planning."""
        async with self.sessions() as session:
            task = await self._get(session, decision.task_id)
        approved = task.decided_by is not None and task.plan is not None
        if approved and task.feedback:
            # Replies since the approval: they revise the plan, which needs approval again.
            to = State.REVISING
        else:
            to = State.APPROVED if approved else State.QUEUED
        task = await self.transition(
            decision.task_id,
            to,
            actor=decision.user,
            expect={State.FAILED},
            enqueue=EXECUTION if to == State.APPROVED else PLANNING,
        )
        await self.threads.post(
            task.channel_id,
            views.ended_message(f":repeat: Retry requested by {views.who(decision.user)}."),
            thread_ts=task.thread_ts,
        )
        await self._update_parent(task)
        return task

    async def cancel(self, decision: Decision) -> Task:
        """Stop the task wherever it is; its jobs are cancelled with it."""
        task = await self.transition(decision.task_id, State.CANCELLED, actor=decision.user)
        self.task_stopped(task.id)
        await self.threads.post(
            task.channel_id,
            views.ended_message(f":no_entry_sign: Cancelled by {views.who(decision.user)}."),
            thread_ts=task.thread_ts,
        )
        await self._update_parent(task)
        return task

    # The one transition function

    async def transition(
        self,
        task_id: int,
        to: State,
        *,
        actor: str | None = None,
        expect: set[State] | None = None,
        plan_version: int | None = None,
        values: dict[str, Any] | None = None,
        enqueue: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Task:
        """Move a task to `to` if allowed; raises InvalidTransition (a no-op) otherwise.

        The UPDATE only applies if the state is still the one checked; when another click
        or replica moved the task first, the check runs again against the new state.
        """
        for _attempt in range(3):
            async with self.sessions.begin() as session:
                task = await self._get(session, task_id)
                current = State(task.state)
                if plan_version is not None and plan_version != task.plan_version:
                    raise InvalidTransition(
                        "That plan was superseded by a newer one; nothing changed."
                    )
                if (expect is not None and current not in expect) or to not in TRANSITIONS[current]:
                    raise InvalidTransition(_already(current))
                changed = await session.execute(
                    update(Task)
                    .where(Task.id == task_id, Task.state == current)
                    .values(state=to, **(values or {}))
                )
                if not changed.rowcount:  # type: ignore[attr-defined]
                    continue  # moved under us: check again
                session.add(
                    TaskEvent(
                        task_id=task_id,
                        from_state=current,
                        to_state=to,
                        actor=actor,
                        detail=detail or {},
                    )
                )
                if to in FINISHED or to == State.FAILED:
                    # DONE and FAILED come from the task's own step, which must live on to
                    # tell the thread; its heartbeat would stop it if its job were cancelled.
                    running = to not in (State.DONE, State.FAILED)
                    await self.queue.cancel_for_task(session, task_id, running=running)
                if enqueue is not None:
                    JobQueue.enqueue(session, task_id, enqueue, task.priority)
                break
        else:
            raise InvalidTransition("Someone else acted on this task just now; nothing changed.")
        await session_refresh(self.sessions, task)
        self.home.changed()
        if enqueue is not None:
            self.job_added()
        return task

    # Jobs

    async def run_job(self, job: Job) -> None:
        """Run one claimed job to its end; failures end up in the thread, never in silence."""
        async with self.sessions() as session:
            task = await self._get(session, job.task_id)
        if job.attempts > 1 and task.thread_ts is not None and not State(task.state).finished:
            why = (
                f"failed for a passing reason ({views.escape(job.last_error[:200])})"
                if job.last_error
                else "was interrupted"
            )
            note = views.ended_message(
                f":arrows_counterclockwise: The {job.kind} step {why}; "
                f"running it again (attempt {job.attempts})."
            )
            await self.threads.post(task.channel_id, note, thread_ts=task.thread_ts)
        await self._check_daily_budget(task)
        try:
            if job.kind == PLANNING:
                await self._plan(task, job)
            else:
                await self._execute(task, job)
        except (Transient, Postponed):
            raise  # the pool tries again later
        except InvalidTransition:
            log.info("job %s for task %s is stale; skipping", job.id, task.id)
        except UnmappedProject as error:
            await self.fail(
                task.id, str(error), message=views.unmapped_project_message(error.project)
            )
        except StepFailed as error:
            await self.fail(task.id, str(error), output=error.output)
        except (IntegrationError, BadReference) as error:  # refused for good, in its words
            await self.fail(task.id, str(error))

    async def _check_daily_budget(self, task: Task) -> None:
        """A step may not start once today's spend reached the daily budget: it waits."""
        budget = self.settings.limits.daily_budget_usd
        today = start_of_day(_now())
        async with self.sessions() as session:
            spent = await spend_since(session, today)
        if spent < budget:
            return
        until = today + timedelta(days=1)
        reason = (
            f"Today's agent spend ({views.fmt_cost(spent)}) reached the daily budget of "
            f"{views.fmt_cost(budget)}; this step waits until {until:%H:%M} UTC."
        )
        note = views.ended_message(f":moneybag: {reason}")
        await self.threads.post(task.channel_id, note, thread_ts=task.thread_ts)
        raise DailyBudgetReached(reason, until=until)

    async def sweep(self) -> None:
        """End stale work: plans nobody approved in time, jobs that waited too long."""
        limits = self.settings.limits
        now = _now()
        async with self.sessions() as session:
            stale_plans = list(
                await session.scalars(
                    select(Task.id).where(
                        Task.state == State.AWAITING_APPROVAL,
                        Task.updated_at < now - timedelta(hours=limits.plan_ttl_hours),
                    )
                )
            )
            stale_jobs = list(
                await session.scalars(
                    select(Job.task_id).where(
                        Job.status == QUEUED,
                        Job.created_at < now - timedelta(hours=limits.queued_ttl_hours),
                    )
                )
            )
        for task_id in stale_plans:
            try:
                task = await self.transition(task_id, State.EXPIRED, actor="fixbot")
            except InvalidTransition:
                continue  # decided on meanwhile
            await self._close_plan(task, views.decision_note("Expired", None, now))
            hours = f"{limits.plan_ttl_hours:g}"
            await self.threads.post(
                task.channel_id,
                views.ended_message(
                    f":hourglass: The plan was not approved within {hours} h and expired. "
                    "`/fix` starts the task again."
                ),
                thread_ts=task.thread_ts,
            )
            await self._update_parent(task)
        for task_id in stale_jobs:
            await self.fail(
                task_id,
                f"The step waited in the queue for more than {limits.queued_ttl_hours:g} h.",
            )
        await self._requeue_orphans(now - timedelta(seconds=2 * limits.job_lease_s))
        # Slack redelivers within minutes; every event it sends is recorded (handlers/triggers).
        await forget_before(self.sessions, "slack", now - SLACK_TRIGGER_MEMORY)

    async def _requeue_orphans(self, quiet_since: datetime) -> None:
        """Active tasks with no queued or running job (a failure that could not be told, a
        crash between two writes): queue their step again, or fail them when there is no
        thread to work in. Only tasks whose last job ended before `quiet_since` count."""
        live = select(Job.id).where(Job.task_id == Task.id, Job.status.in_([QUEUED, JOB_RUNNING]))
        last_end = (
            select(Job.finished_at)
            .where(Job.task_id == Task.id)
            .order_by(Job.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        async with self.sessions() as session:
            orphans = list(
                await session.scalars(
                    select(Task.id).where(
                        Task.state.in_([state.value for state in ACTIVE]),
                        ~live.exists(),
                        Task.created_at < quiet_since,
                        (last_end.is_(None)) | (last_end < quiet_since),
                    )
                )
            )
        for task_id in orphans:
            kind = await self._requeue_orphan(task_id)
            if kind is None:  # no thread to say it in; the person was answered at the time
                reason = "Fixbot lost track of this task before its thread began."
                log.warning("task %s: %s", task_id, reason)
                with contextlib.suppress(InvalidTransition):  # it moved on meanwhile
                    await self.transition(task_id, State.FAILED, values={"failure": reason})
            else:
                log.warning("task %s had no job; its %s step is queued again", task_id, kind)
                self.job_added()

    async def _requeue_orphan(self, task_id: int) -> str | None:
        """Queue the step an orphaned task is in; None when it never got a thread."""
        async with self.sessions.begin() as session:
            # The row lock makes replicas' sweeps take turns (PostgreSQL; SQLite has one writer).
            task = await session.scalar(select(Task).where(Task.id == task_id).with_for_update())
            if task is None or task.thread_ts is None:
                return None
            if await session.scalar(
                select(Job.id).where(Job.task_id == task_id, Job.status.in_([QUEUED, JOB_RUNNING]))
            ):
                return "running"  # a job appeared meanwhile
            kind = EXECUTION if task.state in (State.APPROVED, State.EXECUTING) else PLANNING
            JobQueue.enqueue(session, task_id, kind, task.priority)
            return kind

    async def fail(
        self,
        task_id: int,
        reason: str,
        *,
        output: str | None = None,
        message: views.Message | None = None,
    ) -> None:
        """End a step in failure: the thread says why and offers Retry and Cancel."""
        try:
            task = await self.transition(
                task_id, State.FAILED, values={"failure": reason}, detail={"reason": reason}
            )
        except InvalidTransition:
            return
        failure = views.failure_message(task, reason, output=output)
        if message is not None:
            failure = views.Message(message.text, message.blocks + failure.blocks[-1:])
        await self.threads.post(task.channel_id, failure, thread_ts=task.thread_ts)
        await self._update_parent(task)

    async def _plan(self, task: Task, job: Job) -> None:
        if task.state == State.REVISING:
            return await self._revise(task, job)
        if task.state == State.QUEUED:
            task = await self.transition(task.id, State.PLANNING, detail={"job": job.id})
        elif task.state != State.PLANNING:
            raise InvalidTransition(_already(State(task.state)))
        task, repo = await self._resolve(task)
        worktree = await self.workspaces.prepare(
            repo, task.branch or branch_name(task.ref_key, task.title), task.base_commit
        )
        task = await self._save(
            task, branch=worktree.branch, base_commit=task.base_commit or worktree.base_commit
        )
        given = PlanningInput(
            ref=task.ref_key, repo=repo.name, test_command=repo.test_command, context=task.context
        )
        step = planning_step(
            worktree.path,
            given,
            plugins=(SKILLS,),
            mcp_servers=self._mcp_servers(read_only=True),
            budget_usd=self._budget_left(task),
        )
        result = await self._run_step(task, job, step, "Planning")
        plan, markdown = read_plan(worktree.path, result)
        task = await self._offer_plan(task, repo, worktree.path, plan, markdown)
        await self._tell_jira(
            task,
            f"Fixbot's plan (v{task.plan_version}): {plan.summary}\n\n{plan.root_cause}",
            marker=f"plan v{task.plan_version}",
        )

    async def _offer_plan(
        self,
        task: Task,
        repo: RepoConfig,
        worktree: Path,
        plan: Plan,
        markdown: str,
        *,
        consumed: int = 0,
    ) -> Task:
        """Publish a new plan version and post it with Approve / Reject.

        `consumed`: how many of the task's kept replies this plan took in. Replies that came
        while it was made are not lost: they start a revision at once.
        """
        markdown = self.redact(markdown)
        plan_url = await self._publish_plan(task, repo, worktree, plan, markdown)
        task = await self.transition(
            task.id,
            State.AWAITING_APPROVAL,
            values={
                "plan": plan.model_dump(),
                "plan_markdown": markdown,
                "plan_version": task.plan_version + 1,
            },
        )
        async with self.sessions.begin() as session:
            fresh = await self._get(session, task.id)
            fresh.feedback = list(fresh.feedback or [])[consumed:]
            task.feedback = kept = fresh.feedback
        message = views.plan_message(task, plan, plan_url=plan_url, cost_usd=task.cost_usd)
        # The task awaits approval already: Slack briefly away is waited out here, since a
        # step run again would find no plan to make.
        plan_ts = await retried(
            "posting the plan",
            lambda: self.threads.post(task.channel_id, message, thread_ts=task.thread_ts),
        )
        await self._save(task, plan_message_ts=plan_ts)
        await self._update_parent(task)
        if kept:
            await self._revise_with_kept(task, len(kept))
        return task

    async def _revise_with_kept(self, task: Task, count: int) -> None:
        try:
            task = await self.transition(
                task.id,
                State.REVISING,
                expect={State.AWAITING_APPROVAL},
                enqueue=PLANNING,
                detail={"kept_replies": count},
            )
        except InvalidTransition:
            return  # someone replied or decided meanwhile: that took over
        await self.threads.post(
            task.channel_id, views.revising_with_kept_replies(count), thread_ts=task.thread_ts
        )
        await self._update_parent(task)

    async def _execute(self, task: Task, job: Job) -> None:
        """Run the execution step. Each side effect checks what already happened, so a step
        resumed after a crash at any point completes once: the fix commit already on the
        branch skips the agent, the push and pull request are idempotent, and a task
        already DONE only lacks its final thread message."""
        if task.state == State.APPROVED:
            task = await self.transition(task.id, State.EXECUTING, detail={"job": job.id})
        elif task.state == State.DONE and task.done_message_ts is None:
            pass  # a crash came between DONE and the final message
        elif task.state != State.EXECUTING:
            raise InvalidTransition(_already(State(task.state)))
        await self._update_parent(task)
        repo = self._repo(task)
        assert task.branch and task.base_commit and task.plan_markdown and task.plan
        worktree = await self.workspaces.prepare(repo, task.branch, task.base_commit)
        started = time.monotonic()
        message = self.redact(f"Fix {task.ref_key}: {task.title}"[:72])
        environment = await prepare_environment(
            repo,
            worktree.path,
            self.workspaces.root / "envs",
            within_s=self.settings.limits.setup_timeout_s,
            sandbox=self.agent_env.sandbox,
        )
        if await committed(worktree.path, message) is None:
            step = execution_step(
                worktree.path,
                ref=task.ref_key,
                repo=repo,
                plan_markdown=task.plan_markdown,
                plugins=(SKILLS,),
                mcp_servers=self._mcp_servers(read_only=False),
                budget_usd=self._budget_left(task),
                environment=environment,
            )
            result = await self._run_step(task, job, step, "Execution")
            if result.outcome != "success":
                raise StepFailed(f"The execution agent stopped early ({result.outcome}).")
        verification = await verify_fix(
            worktree.path,
            task.base_commit,
            repo.test_command,
            timeout=self.settings.limits.test_run_timeout_s,
            sandbox=self.agent_env.sandbox,
            reach=[Endpoint.parse(host) for host in repo.network_allow],
            environment=environment,
            checkouts=self.workspaces.root / "checkouts",
        )
        if not verification.ok:
            raise VerificationFailed(verification)
        await self._refuse_secret_values(worktree.path, task.base_commit)
        await commit_all(worktree.path, message)
        pr_url = await self._deliver(task, repo, worktree.path, verification, started)
        if task.state != State.DONE:
            task = await self.transition(task.id, State.DONE, values={"pr_url": pr_url})
        done = views.done_message(
            task,
            pr_url=pr_url,
            red_excerpt=Verification.excerpt(verification.red),
            green_excerpt=Verification.excerpt(verification.green),
            cost_usd=task.cost_usd,
            duration_s=time.monotonic() - started,
            test_changes=verification.test_changes,
            approve_test_changes=bool(verification.test_changes) and task.pr_number is not None,
        )
        done_ts = await self.threads.post(task.channel_id, done, thread_ts=task.thread_ts)
        await self._save(task, done_message_ts=done_ts)
        await self._update_parent(task)
        await self.workspaces.remove(worktree)

    async def _refuse_secret_values(self, worktree: Path, base_commit: str) -> None:
        """StepFailed when a file the agent left holds one of Fixbot's secret values: such a
        file is never committed or pushed."""
        for path in await changed_files(worktree, base_commit):
            file = worktree / path
            if file.is_file() and not file.is_symlink():
                text = (await asyncio.to_thread(file.read_bytes)).decode(errors="replace")
                if self.redact.holds_secret_value(text):
                    raise StepFailed(
                        f"`{path}` holds the value of one of Fixbot's own secrets, so nothing "
                        "was committed or pushed. Remove it and retry, and rotate that secret."
                    )

    async def _run_step(self, task: Task, job: Job, step: AgentStep, label: str) -> StepResult:
        """Run an agent step behind a live status message, and record it in agent_runs."""
        assert task.thread_ts is not None
        step = self._with_ask_tool(task, step)
        # The step takes over the message already there: its place in the queue, or the
        # status of a run that a crash interrupted. A finished step's status stays as it is.
        status = StatusMessage(
            self.threads, task.channel_id, task.thread_ts, label, ts=task.status_message_ts
        )
        await self._save(task, status_message_ts=await status.start())

        async def on_event(event: AgentEvent) -> None:
            await status.show(event.summary, event.cost_usd)

        started = _now()
        interrupted = await self._interrupted_session(job)
        if interrupted is not None:
            step = dataclasses.replace(step, prompt=RESUME_PROMPT, resume_session_id=interrupted)
        run_id: int | None = None

        async def on_session(session_id: str) -> None:
            # On record while it runs, so that after a crash any replica can resume it.
            nonlocal run_id
            async with self.sessions.begin() as session:
                run = AgentRun(
                    task_id=task.id,
                    job_id=job.id,
                    step=step.name,
                    session_id=session_id,
                    outcome=RUNNING,
                    started_at=started,
                )
                session.add(run)
                await session.flush()
                run_id = run.id

        try:
            result = await run_agent_step(step, self.agent_env, on_event, on_session)
        except BaseException as error:
            cancelled = isinstance(error, asyncio.CancelledError)
            if cancelled and await self.queue.lease_lost(job.id):
                raise  # the step is another worker's now: its status and run are not ours
            await status.finish("cancelled" if cancelled else "failed")
            # A failed resume is not tried again: the next attempt starts the step afresh.
            await self._record_run(task, job, step.name, None, started, str(error), run_id)
            await self._save(task, status_message_ts=None)
            raise
        # The agent's work is done: a database briefly away is waited out, not run again.
        await retried(
            "recording the step's result",
            lambda: self._record_run(task, job, step.name, result, started, run_id=run_id),
        )
        await status.finish(_outcome_words(result.outcome), task.cost_usd)
        await self._save(task, status_message_ts=None)
        if result.outcome == "error_max_budget":
            raise StepFailed(
                f"The step reached the task budget of ${self.settings.limits.task_budget_usd:.2f} "
                "and stopped."
            )
        return result

    async def _interrupted_session(self, job: Job) -> str | None:
        """The Claude Code session this job was running when its worker died, if any.

        Its run is marked interrupted: a session is resumed once, then started afresh.
        """
        if job.attempts <= 1:
            return None
        async with self.sessions.begin() as session:
            run = await session.scalar(
                select(AgentRun)
                .where(AgentRun.job_id == job.id, AgentRun.outcome == RUNNING)
                .order_by(AgentRun.id.desc())
                .limit(1)
            )
            if run is None:
                return None
            run.outcome = "interrupted"
            return run.session_id

    async def _record_run(
        self,
        task: Task,
        job: Job,
        step: str,
        result: StepResult | None,
        started: datetime,
        error: str | None = None,
        run_id: int | None = None,
    ) -> None:
        """How a step ended, on its `running` row when it has one."""
        async with self.sessions.begin() as session:
            run = (await session.get(AgentRun, run_id)) if run_id is not None else None
            if run is None:
                run = AgentRun(task_id=task.id, job_id=job.id, step=step, started_at=started)
            if result is None:
                run.outcome, run.error = "error", error
            else:
                run.session_id = result.session_id
                run.outcome = result.outcome
                run.cost_usd = result.cost_usd
                run.input_tokens = result.input_tokens
                run.output_tokens = result.output_tokens
                run.turns = result.turns
                run.duration_s = result.duration_s
                run.error = result.error
                await session.execute(
                    update(Task)
                    .where(Task.id == task.id)
                    .values(cost_usd=Task.cost_usd + result.cost_usd)
                )
            session.add(run)
        if result is not None:  # counted once written: a failed write is tried again
            task.cost_usd += result.cost_usd
            metrics.AGENT_SPEND.labels(metrics.agent_label(step)).inc(result.cost_usd)

    # Side effects Fixbot does itself

    async def _publish_plan(
        self, task: Task, repo: RepoConfig, worktree: Path, plan: Plan, markdown: str
    ) -> str | None:
        """Make the full plan reachable: a draft pull request with GitHub, else a file.

        Only the plan leaves planning: whatever else is in the worktree is discarded and the
        commit holds PLAN.md (redacted) and nothing else.
        """
        assert task.branch and task.thread_ts
        await discard_except(worktree, PLAN_FILE)
        (worktree / PLAN_FILE).unlink(missing_ok=True)  # never written through a link
        (worktree / PLAN_FILE).write_text(markdown)
        if self.github is None:
            await self.threads.upload(
                task.channel_id,
                task.thread_ts,
                filename="PLAN.md",
                content=markdown,
                title=f"Plan for {task.ref_key}",
            )
            return None
        await commit_all(worktree, self.redact(f"Plan for {task.ref_key}"), only=[PLAN_FILE])
        await self._push(repo, worktree, task.branch)
        owner, name = repo.name.split("/")
        thread_url = await self.threads.permalink(task.channel_id, task.thread_ts)
        body = views.pull_request_body(
            task,
            plan,
            thread_url=thread_url,
            red=None,
            green=None,
            cost_usd=task.cost_usd,
            duration_s=None,
        )
        pull = await self.github.ensure_pull_request(
            owner,
            name,
            head=task.branch,
            base=repo.default_branch,
            title=self.redact(f"Fix {task.ref_key}: {task.title}"[:200]),
            body=self.redact(body),
            draft=True,
        )
        await self._save(task, pr_number=pull.number, pr_url=pull.html_url)
        return f"{pull.html_url}/files"

    async def _deliver(
        self,
        task: Task,
        repo: RepoConfig,
        worktree: Path,
        verification: Verification,
        started: float,
    ) -> str:
        """Push the verified fix and make its pull request ready; returns its URL."""
        assert task.branch and task.thread_ts and task.plan
        await self._push(repo, worktree, task.branch)
        if self.github is None:
            return f"{repo.clone_url} (branch {task.branch})"
        owner, name = repo.name.split("/")
        thread_url = await self.threads.permalink(task.channel_id, task.thread_ts)
        body = views.pull_request_body(
            task,
            Plan.model_validate(task.plan),
            thread_url=thread_url,
            red=Verification.excerpt(verification.red),
            green=Verification.excerpt(verification.green),
            cost_usd=task.cost_usd,
            duration_s=time.monotonic() - started,
            test_changes=verification.test_changes,
        )
        pull = await self.github.ensure_pull_request(
            owner,
            name,
            head=task.branch,
            base=repo.default_branch,
            title=self.redact(f"Fix {task.ref_key}: {task.title}"[:200]),
            body=self.redact(body),
        )
        if not verification.test_changes:  # else it stays a draft until they are approved
            pull = await self.github.mark_ready_for_review(owner, name, pull.number)
        await self._save(task, pr_number=pull.number, pr_url=pull.html_url)
        summary = Plan.model_validate(task.plan).summary
        await self._tell_jira(
            task,
            f"Fixbot opened a pull request: {pull.html_url}\n\n{summary}",
            marker="pull request",
            transition=self.settings.jira_transition,
        )
        return pull.html_url

    async def _tell_jira(
        self, task: Task, text: str, *, marker: str, transition: str | None = None
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
            note = views.ended_message(f":warning: {views.escape(str(error))}")
            await self.threads.post(task.channel_id, note, thread_ts=task.thread_ts)

    async def _push(self, repo: RepoConfig, worktree: Path, branch: str) -> None:
        token = self.settings.github_token
        await push(worktree, repo.clone_url, branch, token.get_secret_value() if token else None)

    async def _remove_worktree(self, task: Task) -> None:
        """Remove an ended task's worktree (failed tasks keep theirs for inspection)."""
        if task.branch is None:
            return
        path = self.workspaces.worktree_path(task.branch)
        if path.exists():
            await self.workspaces.remove(Worktree(path, task.branch, task.base_commit or ""))

    async def aclose(self) -> None:
        """Cancel a pending Home republish and close the vendor clients."""
        await self.home.aclose()
        for service in (self.sources.sentry, self.github, self.jira):
            if service is not None:
                await service.aclose()

    async def publish_home(self, user: str, page: int = 0) -> None:
        """Publish the App Home dashboard for `user`, and keep it fresh while they look."""
        await self.home.show(user, page)

    async def _home_board(self, page: int) -> Dashboard:
        return await load_board(self.sessions, self.settings, page)

    async def _home_view(self, board: Dashboard, user: str) -> dict[str, Any]:
        dashboard = await with_mine(self.sessions, board, user)
        return views.home_view(dashboard, user, is_approver=self.policy.is_approver(user))

    # Helpers

    async def _resolve(self, task: Task) -> tuple[Task, RepoConfig]:
        """Fetch the error context once, name the task, and find its repository."""
        if not task.context:
            ref = Reference(RefKind(task.ref_kind), task.ref_key, task.ref_url, task.repo)
            context = await self.sources.resolve(ref)
            # An alert nobody asked for takes the priority of its level from now on.
            priority = task.priority if task.requested_by else priority_for_level(context.level)
            task = await self._save(
                task,
                title=context.title,
                repo=context.repo,
                ref_url=context.url,
                context=context.text,
                priority=priority,
            )
            await self._update_parent(task)
        return task, self._repo(task)

    def _repo(self, task: Task) -> RepoConfig:
        repo = self.settings.repo(task.repo or "")
        if repo is None:
            raise StepFailed(f"The repository `{task.repo}` is not in fixbot.yml any more.")
        return repo

    def _budget_left(self, task: Task) -> float:
        left = self.settings.limits.task_budget_usd - task.cost_usd
        if left <= 0:
            raise StepFailed(
                f"The task has spent its budget of ${self.settings.limits.task_budget_usd:.2f}."
            )
        return left

    def _mcp_servers(self, *, read_only: bool) -> dict[str, Any]:
        return {
            name: server.for_claude()
            for name, server in self.settings.mcp_servers.items()
            if server.read_only or not read_only
        }

    async def _close_plan(self, task: Task, note: str) -> None:
        if task.plan_message_ts is None or task.plan is None:
            return
        plan = Plan.model_validate(task.plan)
        message = views.plan_decided(
            task,
            plan,
            plan_url=f"{task.pr_url}/files" if task.pr_url else None,
            cost_usd=task.cost_usd,
            note=note,
        )
        await self.threads.update(task.channel_id, task.plan_message_ts, message)

    async def _update_parent(self, task: Task) -> None:
        parent_ts = task.parent_ts or task.thread_ts  # parent_ts: a task in an alert's thread
        if parent_ts is not None:
            await self.threads.update(task.channel_id, parent_ts, views.parent_message(task))

    async def _show_queue_place(self, task: Task, job: Job) -> None:
        ahead = await self.queue.ahead_of(job)
        if ahead and task.thread_ts is not None:
            ts = await self.threads.post(
                task.channel_id, views.queued_message(ahead), thread_ts=task.thread_ts
            )
            await self._save(task, status_message_ts=ts)

    async def _save(self, task: Task, **values: Any) -> Task:
        async with self.sessions.begin() as session:
            await session.execute(update(Task).where(Task.id == task.id).values(**values))
        for key, value in values.items():
            setattr(task, key, value)
        return task

    @staticmethod
    async def _get(session: AsyncSession, task_id: int) -> Task:
        task = await session.scalar(select(Task).where(Task.id == task_id))
        if task is None:
            raise InvalidTransition(f"There is no task {task_id}.")
        return task

    # Conversation

    async def task_in_thread(self, channel: str, thread_ts: str) -> Task | None:
        """The task whose thread this is (the newest, when an alert came back)."""
        return await self._newest_task(Task.channel_id == channel, Task.thread_ts == thread_ts)

    async def _newest_task(self, *conditions: ColumnElement[bool]) -> Task | None:
        async with self.sessions() as session:
            return await session.scalar(
                select(Task).where(*conditions).order_by(Task.id.desc()).limit(1)
            )

    async def take_reply(self, task: Task, user: str, text: str) -> None:
        """A person's reply in a task's thread: an answer, a revision request, or a note."""
        if await self._answer_question(task, user, text):
            await self.threads.post(
                task.channel_id, views.answer_passed(user), thread_ts=task.thread_ts
            )
            return
        state = State(task.state)
        if state == State.AWAITING_APPROVAL:
            try:
                await self.transition(
                    task.id,
                    State.REVISING,
                    actor=user,
                    expect={State.AWAITING_APPROVAL},
                    values={"feedback": [*(task.feedback or []), text]},
                    detail={"feedback": text[:500]},
                    enqueue=PLANNING,
                )
            except InvalidTransition:
                return await self.take_reply(await self._fresh(task), user, text)
            await self.threads.post(
                task.channel_id, views.revising_message(user, text), thread_ts=task.thread_ts
            )
            await self._update_parent(await self._fresh(task))
        elif state in ACTIVE or state == State.FAILED:
            async with self.sessions.begin() as session:
                fresh = await self._get(session, task.id)
                fresh.feedback = [*(fresh.feedback or []), text]
            await self.threads.post(
                task.channel_id, views.feedback_kept(state), thread_ts=task.thread_ts
            )

    async def _revise(self, task: Task, job: Job) -> None:
        """Planning again with the thread's feedback, resuming the planning session."""
        repo = self._repo(task)
        assert task.branch and task.plan is not None
        worktree = await self.workspaces.prepare(repo, task.branch, task.base_commit)
        async with self.sessions() as session:
            resume = await session.scalar(
                select(AgentRun.session_id)
                .where(
                    AgentRun.task_id == task.id,
                    AgentRun.step == "planning",
                    AgentRun.session_id.is_not(None),
                )
                .order_by(AgentRun.id.desc())
                .limit(1)
            )
        given = PlanningInput(
            ref=task.ref_key,
            repo=repo.name,
            test_command=repo.test_command,
            context=task.context,
            feedback=tuple(task.feedback or ()),
            previous_plan=task.plan_markdown,
        )
        step = planning_step(
            worktree.path,
            given,
            plugins=(SKILLS,),
            mcp_servers=self._mcp_servers(read_only=True),
            budget_usd=self._budget_left(task),
            resume_session_id=resume,
        )
        result = await self._run_step(task, job, step, "Revising the plan")
        plan, markdown = read_plan(worktree.path, result)
        if markdown == task.plan_markdown:  # the agent returned the plan but left PLAN.md
            markdown = render_plan(plan)
            (worktree.path / PLAN_FILE).write_text(markdown)
        await self._close_plan(task, views.decision_note("superseded", None, _now()))
        await self._offer_plan(
            task, repo, worktree.path, plan, markdown, consumed=len(given.feedback)
        )

    def _with_ask_tool(self, task: Task, step: AgentStep) -> AgentStep:
        """Give a step the `ask_in_thread` tool, bound to this task's thread."""

        async def ask(question: str) -> str | None:
            return await self.ask_in_thread(task, question)

        return replace(
            step,
            mcp_servers={**step.mcp_servers, ASK_SERVER: ask_server(ask)},
            allowed_tools=[*step.allowed_tools, ASK_TOOL],
        )

    async def ask_in_thread(self, task: Task, question: str) -> str | None:
        """Post an agent's question in the thread; the answer, or None after the timeout."""
        timeout = self.settings.question_timeout_s
        message = views.question_message(question, self.settings.approvers, timeout)
        # Saved before it is posted: a reply that comes at once finds an open question.
        async with self.sessions.begin() as session:
            asked = Question(task_id=task.id, question=question)
            session.add(asked)
        ts = await self.threads.post(task.channel_id, message, thread_ts=task.thread_ts)
        async with self.sessions.begin() as session:
            await session.execute(
                update(Question).where(Question.id == asked.id).values(message_ts=ts)
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(QUESTION_POLL_S)
            async with self.sessions() as session:
                answer = await session.scalar(
                    select(Question.answer).where(Question.id == asked.id)
                )
            if answer is not None:
                return answer
        async with self.sessions.begin() as session:
            # Closed unanswered: a late reply becomes feedback instead.
            await session.execute(
                update(Question)
                .where(Question.id == asked.id, Question.answer.is_(None))
                .values(answer="", answered_at=_now())
            )
        await self.threads.post(
            task.channel_id, views.question_unanswered(), thread_ts=task.thread_ts
        )
        return None

    async def _answer_question(self, task: Task, user: str, text: str) -> bool:
        if not self.policy.is_approver(user):
            return False
        async with self.sessions.begin() as session:
            open_id = await session.scalar(
                select(Question.id)
                .where(Question.task_id == task.id, Question.answer.is_(None))
                .order_by(Question.id.desc())
                .limit(1)
            )
            if open_id is None:
                return False
            changed = await session.execute(
                update(Question)
                .where(Question.id == open_id, Question.answer.is_(None))
                .values(answer=text, answered_by=user, answered_at=_now())
            )
            return bool(changed.rowcount)  # type: ignore[attr-defined]

    async def task_for_pull(self, repo: str, number: int) -> Task | None:
        return await self._newest_task(Task.repo == repo, Task.pr_number == number)

    async def pull_request_closed(self, task: Task, *, merged: bool, by: str | None) -> None:
        """The task's pull request was merged or closed: the thread is told."""
        if task.pr_url is None:
            return
        message = views.pull_request_closed(task.pr_url, merged=merged, by=by)
        await self.threads.post(task.channel_id, message, thread_ts=task.thread_ts)
        if not merged and not State(task.state).finished and task.state != State.FAILED:
            try:
                await self.transition(
                    task.id, State.CANCELLED, actor=by, detail={"pull_request": "closed"}
                )
            except InvalidTransition:
                return
            await self._update_parent(await self._fresh(task))

    async def _fresh(self, task: Task) -> Task:
        async with self.sessions() as session:
            return await self._get(session, task.id)


class VerificationFailed(StepFailed):
    """Fixbot's own red→green check did not hold; nothing was pushed."""

    def __init__(self, verification: Verification) -> None:
        failing = (
            verification.guarded or verification.suite or verification.green or verification.red
        )
        super().__init__(
            f"Verification failed: {verification.reason}. Nothing was pushed.",
            output=failing.output if failing is not None else None,
        )


def _already(state: State) -> str:
    words = {
        State.APPROVED: "This plan was already approved; nothing changed.",
        State.EXECUTING: "This plan was already approved and the fix is under way.",
        State.REJECTED: "This plan was already rejected; nothing changed.",
        State.DONE: "This task is already done.",
        State.CANCELLED: "This task was cancelled.",
        State.EXPIRED: "This plan expired.",
    }
    return words.get(state, f"The task is {state.value.replace('_', ' ')}; nothing changed.")


def _outcome_words(outcome: str) -> str:
    return {
        "success": "finished",
        "error_max_budget": "stopped at the budget",
        "error_max_turns": "stopped at the turn limit",
        "interrupted": "cancelled",
    }.get(outcome, "failed")


def _now() -> datetime:
    return datetime.now(UTC)


async def session_refresh(sessions: async_sessionmaker[AsyncSession], task: Task) -> None:
    """Reload a detached task's columns after a transition."""
    async with sessions() as session:
        fresh = await session.get(Task, task.id)
        assert fresh is not None
        for column in Task.__table__.columns.keys():
            setattr(task, column, getattr(fresh, column))

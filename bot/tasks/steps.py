"""The agent steps the worker pool runs for a task: planning (and revising) and execution.

Each step runs behind a live status message, on record in `agent_runs` while it runs (so a
step whose worker died is resumed, once), and ends in an `Outcome` for the pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from agents.ask import ASK_TOOL, ask_server
from agents.ask import SERVER as ASK_SERVER
from agents.execution import execution_step
from agents.permissions import PLAN_FILE
from agents.plan import Plan
from agents.planning import PlanningInput, planning_step, read_plan, render_plan
from agents.runner import AgentEnvironment, AgentEvent, AgentStep, StepResult
from bot import views
from bot.config import Settings
from bot.dashboard import TaskSummary, spend_since, start_of_day
from bot.errors import BadReference, DailyBudgetReached, InvalidTransition, Postponed
from bot.faults import retried
from bot.integrations import IntegrationError
from bot.jobs import Outcome
from bot.models import Reference, RefKind, State
from bot.progress import StatusMessage
from bot.redact import Redactor
from bot.seams import AgentRunner, Repos
from bot.sources import Sources, UnmappedProject
from bot.tasks.delivery import Delivery
from bot.tasks.lifecycle import Lifecycle, already, priority_for_level, repo_of
from bot.tasks.questions import Questions
from bot.tasks.store import TaskStore, now
from bot.tasks.thread import TaskThread
from repos.config import RepoConfig
from repos.errors import StepFailed, Transient
from repos.verify import Verification
from repos.workspace import branch_name
from storage.jobs import JobKind
from storage.tables import Job, Task

log = logging.getLogger(__name__)

RESUME_PROMPT = (
    "Fixbot was interrupted while you worked on this step. Continue from where you "
    "stopped: check what is already done (files, test runs) and finish the step."
)
SKILLS = Path(__file__).resolve().parent.parent.parent / "skills"


class Steps:
    """Runs a task's planning and execution jobs."""

    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        lifecycle: Lifecycle,
        *,
        repos: Repos,
        runner: AgentRunner,
        agent_env: AgentEnvironment,
        sources: Sources,
        delivery: Delivery,
        questions: Questions,
        redactor: Redactor,
    ) -> None:
        self.settings = settings
        self.store = store
        self.lifecycle = lifecycle
        self.repos = repos
        self.runner = runner
        self.agent_env = agent_env
        self.sources = sources
        self.delivery = delivery
        self.questions = questions
        self.redact = redactor

    async def run_job(self, job: Job) -> Outcome:
        """Run one claimed job to its end; failures end up in the thread, never in silence."""
        task = await self.store.get(job.task_id)
        thread = self.lifecycle.thread(task)
        if job.attempts > 1 and task.thread_ts is not None and not State(task.state).finished:
            why = (
                f"failed for a passing reason ({views.escape(job.last_error[:200])})"
                if job.last_error
                else "was interrupted"
            )
            await thread.reply(
                views.ended_message(
                    f":arrows_counterclockwise: The {job.kind} step {why}; "
                    f"running it again (attempt {job.attempts})."
                )
            )
        try:
            await self._check_daily_budget(thread)
            if job.kind == JobKind.PLANNING:
                await self._plan(task, job)
            else:
                await self._execute(task, job)
        except Postponed as wait:
            return Outcome.postponed(wait.until)
        except Transient:
            raise  # the pool tries again later
        except InvalidTransition as error:
            log.info("job %s for task %s is stale; skipping", job.id, task.id)
            return Outcome.skipped(str(error))
        except UnmappedProject as error:
            message = views.unmapped_project_message(error.project)
            await self.lifecycle.fail(task.id, str(error), message=message)
            return Outcome.failed(str(error))
        except StepFailed as error:
            await self.lifecycle.fail(task.id, str(error), output=error.output)
            return Outcome.failed(str(error))
        except (IntegrationError, BadReference) as error:  # refused for good, in its words
            await self.lifecycle.fail(task.id, str(error))
            return Outcome.failed(str(error))
        return Outcome.done()

    async def _check_daily_budget(self, thread: TaskThread) -> None:
        """A step may not start once today's spend reached the daily budget: it waits."""
        budget = self.settings.limits.daily_budget_usd
        today = start_of_day(now())
        async with self.store.sessions() as session:
            spent = await spend_since(session, today)
        if spent < budget:
            return
        until = today + timedelta(days=1)
        reason = (
            f"Today's agent spend ({views.fmt_cost(spent)}) reached the daily budget of "
            f"{views.fmt_cost(budget)}; this step waits until {until:%H:%M} UTC."
        )
        await thread.reply(views.ended_message(f":moneybag: {reason}"))
        raise DailyBudgetReached(reason, until=until)

    # Planning

    async def _plan(self, task: Task, job: Job) -> None:
        """Plan the fix; in REVISING, plan again with the thread's feedback, resuming the
        planning session."""
        revising = task.state == State.REVISING
        if task.state == State.QUEUED:
            task = await self.lifecycle.transition(task.id, State.PLANNING, detail={"job": job.id})
        elif unposted_plan(task):
            # The step was stopped (its lease lost, say) between recording the plan and
            # posting it: post it now rather than leave a plan no one can see.
            plan_url = f"{task.pr_url}/files" if task.pr_url else None
            await self._post_plan(task, Plan.model_validate(task.plan), plan_url)
            return
        elif task.state not in (State.PLANNING, State.REVISING):
            raise InvalidTransition(already(State(task.state)))
        if revising:
            repo = repo_of(self.settings, task)
            assert task.branch and task.plan is not None
            worktree = await self.repos.prepare(repo, task.branch, task.base_commit)
            resume = await self.store.planning_session(task.id)
        else:
            task, repo = await self._resolve(task)
            branch = task.branch or branch_name(task.ref_key, task.title)
            worktree = await self.repos.prepare(repo, branch, task.base_commit)
            base_commit = task.base_commit or worktree.base_commit
            task = await self.store.save(task, branch=worktree.branch, base_commit=base_commit)
            resume = None
        given = PlanningInput(
            ref=task.ref_key,
            repo=repo.name,
            test_command=repo.test_command,
            context=task.context,
            feedback=tuple(task.feedback or ()) if revising else (),
            previous_plan=task.plan_markdown if revising else None,
        )
        step = planning_step(
            worktree.path,
            given,
            plugins=(SKILLS,),
            mcp_servers=self._mcp_servers(read_only=True),
            budget_usd=self._budget_left(task),
            resume_session_id=resume,
        )
        label = "Revising the plan" if revising else "Planning"
        result = await self._run_step(task, job, step, label)
        plan, markdown = read_plan(worktree.path, result)
        if revising:
            if markdown == task.plan_markdown:  # the agent returned the plan but left PLAN.md
                markdown = render_plan(plan)
                (worktree.path / PLAN_FILE).write_text(markdown)
            superseded = views.decision_note("superseded", None, now())
            await self.lifecycle.thread(task).close_plan(task, superseded)
        task = await self._offer_plan(
            task, repo, worktree.path, plan, markdown, consumed=len(given.feedback)
        )
        if not revising:
            await self.delivery.tell_jira(
                task,
                self.lifecycle.thread(task),
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
        consumed: int,
    ) -> Task:
        """Publish a new plan version and post it with Approve / Reject.

        `consumed`: how many of the task's kept replies this plan took in. Replies that came
        while it was made are not lost: they start a revision at once.
        """
        markdown = self.redact(markdown)
        plan_url = await self.delivery.publish_plan(
            task, self.lifecycle.thread(task), repo, worktree, plan, markdown
        )
        task = await self.lifecycle.transition(
            task.id,
            State.AWAITING_APPROVAL,
            values={
                "plan": plan.model_dump(),
                "plan_markdown": markdown,
                "plan_version": task.plan_version + 1,
            },
        )
        kept = await self.store.drop_feedback(task, consumed)
        await self._post_plan(task, plan, plan_url)
        if kept:
            await self._revise_with_kept(task, len(kept))
        return task

    async def _post_plan(self, task: Task, plan: Plan, plan_url: str | None) -> None:
        """Post the plan with Approve / Reject, and keep the parent current."""
        message = views.plan_message(
            TaskSummary.of(task), plan, plan_url=plan_url, cost_usd=task.cost_usd
        )
        # The task awaits approval already: Slack briefly away is waited out here.
        thread = self.lifecycle.thread(task)
        plan_ts = await retried("posting the plan", lambda: thread.reply(message))
        await self.store.save(task, plan_message_ts=plan_ts)
        await thread.update_parent(task)

    async def _revise_with_kept(self, task: Task, count: int) -> None:
        try:
            task = await self.lifecycle.transition(
                task.id,
                State.REVISING,
                expect={State.AWAITING_APPROVAL},
                enqueue=JobKind.PLANNING,
                detail={"kept_replies": count},
            )
        except InvalidTransition:
            return  # someone replied or decided meanwhile: that took over
        thread = self.lifecycle.thread(task)
        await thread.reply(views.revising_with_kept_replies(count))
        await thread.update_parent(task)

    # Execution

    async def _execute(self, task: Task, job: Job) -> None:
        """Run the execution step. Each side effect checks what already happened, so a step
        resumed after a crash at any point completes once: the fix commit already on the
        branch skips the agent, the push and pull request are idempotent, and a task
        already DONE only lacks its final thread message."""
        if task.state == State.APPROVED:
            task = await self.lifecycle.transition(task.id, State.EXECUTING, detail={"job": job.id})
        elif task.state == State.DONE and task.done_message_ts is None:
            pass  # a crash came between DONE and the final message
        elif task.state != State.EXECUTING:
            raise InvalidTransition(already(State(task.state)))
        await self.lifecycle.thread(task).update_parent(task)
        repo = repo_of(self.settings, task)
        assert task.branch and task.base_commit and task.plan_markdown and task.plan
        worktree = await self.repos.prepare(repo, task.branch, task.base_commit)
        started = time.monotonic()
        message = self.redact(f"Fix {task.ref_key}: {task.title}"[:72])
        environment = await self.repos.environment(repo, worktree.path)
        if await self.repos.committed(worktree.path, message) is None:
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
        verification = await self.repos.verify(repo, worktree.path, task.base_commit, environment)
        if not verification.ok:
            raise VerificationFailed(verification)
        await self._refuse_secret_values(worktree.path, task.base_commit)
        await self.repos.commit_all(worktree.path, message)
        thread = self.lifecycle.thread(task)
        pr_url = await self.delivery.deliver(
            task, thread, repo, worktree.path, verification, time.monotonic() - started
        )
        if task.state != State.DONE:
            task = await self.lifecycle.transition(task.id, State.DONE, values={"pr_url": pr_url})
        done = views.done_message(
            TaskSummary.of(task),
            pr_url=pr_url,
            red_excerpt=Verification.excerpt(verification.red),
            green_excerpt=Verification.excerpt(verification.green),
            cost_usd=task.cost_usd,
            duration_s=time.monotonic() - started,
            test_changes=verification.test_changes,
            approve_test_changes=bool(verification.test_changes) and task.pr_number is not None,
        )
        await self.store.save(task, done_message_ts=await thread.reply(done))
        await thread.update_parent(task)
        await self.repos.remove(worktree)

    async def _refuse_secret_values(self, worktree: Path, base_commit: str) -> None:
        """StepFailed when a file the agent left holds one of Fixbot's secret values: such a
        file is never committed or pushed."""
        for path in await self.repos.changed_files(worktree, base_commit):
            file = worktree / path
            if file.is_file() and not file.is_symlink():
                text = (await asyncio.to_thread(file.read_bytes)).decode(errors="replace")
                if self.redact.holds_secret_value(text):
                    raise StepFailed(
                        f"`{path}` holds the value of one of Fixbot's own secrets, so nothing "
                        "was committed or pushed. Remove it and retry, and rotate that secret."
                    )

    # The shared step runner

    async def _run_step(self, task: Task, job: Job, step: AgentStep, label: str) -> StepResult:
        """Run an agent step behind a live status message, and record it in agent_runs."""
        thread = self.lifecycle.thread(task)
        assert thread.thread_ts is not None
        step = self._with_ask_tool(task, step)
        # The step takes over the message already there: its place in the queue, or the
        # status of a run that a crash interrupted. A finished step's status stays as it is.
        status = StatusMessage(
            thread.threads, thread.channel, thread.thread_ts, label, ts=thread.status_message_ts
        )
        await self.store.save(task, status_message_ts=await status.start())

        async def on_event(event: AgentEvent) -> None:
            await status.show(event.summary, event.cost_usd)

        started = now()
        interrupted = await self.store.interrupted_session(job)
        if interrupted is not None:
            step = dataclasses.replace(step, prompt=RESUME_PROMPT, resume_session_id=interrupted)
        run_id: int | None = None

        async def on_session(session_id: str) -> None:
            nonlocal run_id
            run_id = await self.store.start_run(task, job, step.name, session_id, started)

        try:
            result = await self.runner(step, self.agent_env, on_event, on_session)
        except BaseException as error:
            cancelled = isinstance(error, asyncio.CancelledError)
            if cancelled and await self.lifecycle.queue.lease_lost(job.id):
                raise  # the step is another worker's now: its status and run are not ours
            await status.finish("cancelled" if cancelled else "failed")
            # A failed resume is not tried again: the next attempt starts the step afresh.
            await self.store.record_run(task, job, step.name, None, started, str(error), run_id)
            await self.store.save(task, status_message_ts=None)
            raise
        # The agent's work is done: a database briefly away is waited out, not run again.
        await retried(
            "recording the step's result",
            lambda: self.store.record_run(task, job, step.name, result, started, run_id=run_id),
        )
        await status.finish(_outcome_words(result.outcome), task.cost_usd)
        await self.store.save(task, status_message_ts=None)
        if result.outcome == "error_max_budget":
            raise StepFailed(
                f"The step reached the task budget of ${self.settings.limits.task_budget_usd:.2f} "
                "and stopped."
            )
        return result

    def _with_ask_tool(self, task: Task, step: AgentStep) -> AgentStep:
        """Give a step the `ask_in_thread` tool, bound to this task's thread."""

        async def ask(question: str) -> str | None:
            return await self.questions.ask(task, self.lifecycle.thread(task), question)

        return dataclasses.replace(
            step,
            mcp_servers={**step.mcp_servers, ASK_SERVER: ask_server(ask)},
            allowed_tools=[*step.allowed_tools, ASK_TOOL],
        )

    # Helpers

    async def _resolve(self, task: Task) -> tuple[Task, RepoConfig]:
        """Fetch the error context once, name the task, and find its repository."""
        if not task.context:
            ref = Reference(RefKind(task.ref_kind), task.ref_key, task.ref_url, task.repo)
            context = await self.sources.resolve(ref)
            # An alert nobody asked for takes the priority of its level from now on.
            priority = task.priority if task.requested_by else priority_for_level(context.level)
            task = await self.store.save(
                task,
                title=context.title,
                repo=context.repo,
                ref_url=context.url,
                context=context.text,
                priority=priority,
            )
            await self.lifecycle.thread(task).update_parent(task)
        return task, repo_of(self.settings, task)

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


def _outcome_words(outcome: str) -> str:
    return {
        "success": "finished",
        "error_max_budget": "stopped at the budget",
        "error_max_turns": "stopped at the turn limit",
        "interrupted": "cancelled",
    }.get(outcome, "failed")


def unposted_plan(task: Task) -> bool:
    """Whether the task's plan was recorded but its message never posted."""
    return (
        task.state == State.AWAITING_APPROVAL
        and task.plan is not None
        and task.plan_message_ts is None
    )

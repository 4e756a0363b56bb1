"""A task's life: created, decided on, moved between states, failed, swept.

A transition checks the current state against `TRANSITIONS`, writes the new state and a
`task_events` row in one transaction (a conditional UPDATE, so two clicks can't both
win), and enqueues what follows. The task's state lives in the database, never in a
coroutine, so any replica can run any step and a restart loses nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update

from bot import views
from bot.config import Settings
from bot.dashboard import TaskSummary
from bot.errors import InvalidTransition
from bot.models import ACTIVE, FINISHED, TRANSITIONS, Reference, State
from bot.policy import ApprovalPolicy
from bot.seams import JobControl, Repos, Threads
from bot.sources import Sources, TaskContext
from bot.tasks.delivery import Delivery
from bot.tasks.questions import Questions
from bot.tasks.store import TaskStore, get_task, now
from bot.tasks.thread import TaskThread
from bot.thread import SlackUnavailable
from repos.config import RepoConfig
from repos.errors import StepFailed
from repos.workspace import Worktree
from storage.jobs import JobKind
from storage.queue import JobQueue
from storage.tables import Task, TaskEvent
from storage.triggers import forget_before

log = logging.getLogger(__name__)

SLACK_TRIGGER_MEMORY = timedelta(days=1)  # how long a Slack event id is kept to spot repeats

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
    plan_ts: str | None = None  # the plan message clicked, when the click came from it


class Lifecycle:
    """Creates tasks and moves them between states; what a step does is `Steps`'."""

    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        queue: JobQueue,
        threads: Threads,
        jobs: JobControl,
        *,
        sources: Sources,
        repos: Repos,
        delivery: Delivery,
        questions: Questions,
        policy: ApprovalPolicy,
        changed: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.threads = threads
        self.jobs = jobs
        self.sources = sources
        self.repos = repos
        self.delivery = delivery
        self.questions = questions
        self.policy = policy
        self.changed = changed  # a task changed: App Home republishes

    def thread(self, task: Task) -> TaskThread:
        return TaskThread.of(self.threads, task)

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
        task = await self.store.add(
            Task(
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
            ),
            actor=user,
        )
        self.changed()
        try:
            parent_ts = await self.thread(task).reply(views.parent_message(TaskSummary.of(task)))
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
        job = await self.store.place(task, JobKind.PLANNING, **placed)
        ahead = await self.queue.ahead_of(job)
        if ahead:
            ts = await self.thread(task).reply(views.queued_message(ahead))
            await self.store.save(task, status_message_ts=ts)
        self.jobs.wake()
        return task

    # Decisions

    async def approve(self, decision: Decision) -> Task:
        """Approve the current plan: queue execution, replace the buttons with who and when."""
        task = await self.store.get(decision.task_id)
        self.policy.check_approve(decision.user, task)
        return await self.approve_as(
            decision.task_id, decision.user, decision.plan_version, plan_ts=decision.plan_ts
        )

    async def approve_as(
        self,
        task_id: int,
        actor: str,
        plan_version: int | None = None,
        *,
        plan_ts: str | None = None,
    ) -> Task:
        """Approve for someone already checked (here, or a GitHub approver): queue execution."""
        task = await self.transition(
            task_id,
            State.APPROVED,
            actor=actor,
            expect={State.AWAITING_APPROVAL},
            plan_version=plan_version,
            values={"decided_by": actor},
            enqueue=JobKind.EXECUTION,
        )
        note = views.decision_note("Approved", actor, now())
        await self.thread(task).close_plan(task, note, plan_ts=plan_ts)
        return task

    async def reject(self, decision: Decision) -> Task:
        """Reject the current plan: the task ends and nothing more is pushed."""
        self.policy.check_approve(decision.user)  # rejecting one's own plan is fine
        task = await self.transition(
            decision.task_id,
            State.REJECTED,
            actor=decision.user,
            expect={State.AWAITING_APPROVAL},
            plan_version=decision.plan_version,
            values={"decided_by": decision.user},
        )
        thread = self.thread(task)
        note = views.decision_note("Rejected", decision.user, now())
        await thread.close_plan(task, note, plan_ts=decision.plan_ts)
        await thread.update_parent(task)
        await self._remove_worktree(task)
        return task

    async def approve_test_changes(self, decision: Decision) -> Task:
        """An approver accepts the fix's changes to how tests run: its draft pull request is
        marked ready. Asked of the same policy as a plan's approval."""
        task = await self.store.get(decision.task_id)
        self.policy.check_approve(decision.user, task)
        if await self.store.test_changes_approved(task.id):
            raise InvalidTransition("These test changes were already approved; nothing changed.")
        if task.state != State.DONE or task.pr_number is None or self.delivery.github is None:
            raise InvalidTransition(already(State(task.state)))
        repo = repo_of(self.settings, task)
        await self.store.record_test_changes_approved(task.id, decision.user)
        await self.delivery.mark_ready(task, repo)
        await self.thread(task).reply(views.test_changes_approved(decision.user, task.pr_url))
        return task

    async def retry(self, decision: Decision) -> Task:
        """Run a failed task's step again: execution when a plan was approved, else planning."""
        task = await self.store.get(decision.task_id)
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
            enqueue=JobKind.EXECUTION if to == State.APPROVED else JobKind.PLANNING,
        )
        thread = self.thread(task)
        await thread.reply(
            views.ended_message(f":repeat: Retry requested by {views.who(decision.user)}.")
        )
        await thread.update_parent(task)
        return task

    async def cancel(self, decision: Decision) -> Task:
        """Stop the task wherever it is; its jobs are cancelled with it."""
        task = await self.transition(decision.task_id, State.CANCELLED, actor=decision.user)
        self.jobs.cancel_task(task.id)
        thread = self.thread(task)
        await thread.reply(
            views.ended_message(f":no_entry_sign: Cancelled by {views.who(decision.user)}.")
        )
        await thread.update_parent(task)
        return task

    # Replies and pull requests

    async def take_reply(self, task: Task, user: str, text: str) -> None:
        """A person's reply in a task's thread: an answer, a revision request, or a note."""
        thread = self.thread(task)
        if await self.questions.answer(task, user, text):
            await thread.reply(views.answer_passed(user))
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
                    enqueue=JobKind.PLANNING,
                )
            except InvalidTransition:
                return await self.take_reply(await self.store.fresh(task), user, text)
            await thread.reply(views.revising_message(user, text))
            await thread.update_parent(await self.store.fresh(task))
        elif state in ACTIVE or state == State.FAILED:
            await self.store.add_feedback(task.id, text)
            await thread.reply(views.feedback_kept(state))

    async def pull_request_closed(self, task: Task, *, merged: bool, by: str | None) -> None:
        """The task's pull request was merged or closed: the thread is told."""
        if task.pr_url is None:
            return
        thread = self.thread(task)
        await thread.reply(views.pull_request_closed(task.pr_url, merged=merged, by=by))
        if not merged and not State(task.state).finished and task.state != State.FAILED:
            try:
                await self.transition(
                    task.id, State.CANCELLED, actor=by, detail={"pull_request": "closed"}
                )
            except InvalidTransition:
                return
            await thread.update_parent(await self.store.fresh(task))

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
        enqueue: JobKind | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Task:
        """Move a task to `to` if allowed; raises InvalidTransition (a no-op) otherwise.

        The UPDATE only applies if the state is still the one checked; when another click
        or replica moved the task first, the check runs again against the new state.
        """
        for _attempt in range(3):
            async with self.store.sessions.begin() as session:
                task = await get_task(session, task_id)
                current = State(task.state)
                if plan_version is not None and plan_version != task.plan_version:
                    raise InvalidTransition(
                        "That plan was superseded by a newer one; nothing changed."
                    )
                if (expect is not None and current not in expect) or to not in TRANSITIONS[current]:
                    raise InvalidTransition(already(current))
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
        await self.store.refresh(task)
        self.changed()
        if enqueue is not None:
            self.jobs.wake()
        return task

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
        failure = views.failure_message(TaskSummary.of(task), reason, output=output)
        if message is not None:
            failure = views.Message(message.text, message.blocks + failure.blocks[-1:])
        thread = self.thread(task)
        await thread.reply(failure)
        await thread.update_parent(task)

    # Stale work

    async def sweep(self) -> None:
        """End stale work: plans nobody approved in time, jobs that waited too long."""
        limits = self.settings.limits
        swept_at = now()
        stale_plans = await self.store.plans_waiting_since(
            swept_at - timedelta(hours=limits.plan_ttl_hours)
        )
        stale_jobs = await self.store.jobs_queued_since(
            swept_at - timedelta(hours=limits.queued_ttl_hours)
        )
        for task_id in stale_plans:
            try:
                task = await self.transition(task_id, State.EXPIRED, actor="fixbot")
            except InvalidTransition:
                continue  # decided on meanwhile
            thread = self.thread(task)
            await thread.close_plan(task, views.decision_note("Expired", None, swept_at))
            hours = f"{limits.plan_ttl_hours:g}"
            await thread.reply(
                views.ended_message(
                    f":hourglass: The plan was not approved within {hours} h and expired. "
                    "`/fix` starts the task again."
                )
            )
            await thread.update_parent(task)
        for task_id in stale_jobs:
            await self.fail(
                task_id,
                f"The step waited in the queue for more than {limits.queued_ttl_hours:g} h.",
            )
        await self._requeue_orphans(swept_at - timedelta(seconds=2 * limits.job_lease_s))
        # Slack redelivers within minutes; every event it sends is recorded (handlers/triggers).
        await forget_before(self.store.sessions, "slack", swept_at - SLACK_TRIGGER_MEMORY)

    async def _requeue_orphans(self, quiet_since: datetime) -> None:
        """Active tasks with no queued or running job: queue their step again, or fail them
        when there is no thread to work in."""
        for task_id in await self.store.orphans(quiet_since):
            kind = await self.store.requeue_orphan(task_id)
            if kind is None:  # no thread to say it in; the person was answered at the time
                reason = "Fixbot lost track of this task before its thread began."
                log.warning("task %s: %s", task_id, reason)
                with contextlib.suppress(InvalidTransition):  # it moved on meanwhile
                    await self.transition(task_id, State.FAILED, values={"failure": reason})
            else:
                log.warning("task %s had no job; its %s step is queued again", task_id, kind)
                self.jobs.wake()

    async def _remove_worktree(self, task: Task) -> None:
        """Remove an ended task's worktree (failed tasks keep theirs for inspection)."""
        if task.branch is None:
            return
        path = self.repos.worktree_path(task.branch)
        if path.exists():
            await self.repos.remove(Worktree(path, task.branch, task.base_commit or ""))


def repo_of(settings: Settings, task: Task) -> RepoConfig:
    """The task's repository in the settings; StepFailed when it is not there any more."""
    repo = settings.repo(task.repo or "")
    if repo is None:
        raise StepFailed(f"The repository `{task.repo}` is not in fixbot.yml any more.")
    return repo


def already(state: State) -> str:
    """Why a decision on a task in `state` changes nothing, in a sentence."""
    words = {
        State.APPROVED: "This plan was already approved; nothing changed.",
        State.EXECUTING: "This plan was already approved and the fix is under way.",
        State.REJECTED: "This plan was already rejected; nothing changed.",
        State.DONE: "This task is already done.",
        State.CANCELLED: "This task was cancelled.",
        State.EXPIRED: "This plan expired.",
    }
    return words.get(state, f"The task is {state.value.replace('_', ' ')}; nothing changed.")

"""A task's place in Slack: its channel, its thread, and Fixbot's messages there."""

from __future__ import annotations

from dataclasses import dataclass

from agents.plan import Plan
from bot import views
from bot.dashboard import TaskSummary
from bot.seams import Threads
from storage.tables import Task


@dataclass(frozen=True)
class TaskThread:
    """Where a task speaks. Built from the task's columns; `TaskThread.of(threads, task)`."""

    threads: Threads
    channel: str
    thread_ts: str | None  # None only before the task's first message is posted
    parent_ts: str | None = None  # Fixbot's parent message when the thread is an alert's
    status_message_ts: str | None = None
    plan_message_ts: str | None = None

    @classmethod
    def of(cls, threads: Threads, task: Task) -> TaskThread:
        return cls(
            threads,
            task.channel_id,
            task.thread_ts,
            task.parent_ts,
            task.status_message_ts,
            task.plan_message_ts,
        )

    @property
    def parent(self) -> str | None:
        """The message that shows the task's state: its own in an alert's thread, else the
        thread's first."""
        return self.parent_ts or self.thread_ts

    async def reply(self, message: views.Message) -> str:
        """Post in the thread; returns the message's ts."""
        return await self.threads.post(self.channel, message, thread_ts=self.thread_ts)

    async def edit(self, ts: str, message: views.Message) -> None:
        await self.threads.update(self.channel, ts, message)

    async def update_parent(self, task: Task, after_merge: str | None = None) -> None:
        """Show the task's state (and the merged fix's `after_merge` line) on its parent."""
        if self.parent is not None:
            await self.edit(self.parent, views.parent_message(TaskSummary.of(task), after_merge))

    async def close_plan(self, task: Task, note: str, *, plan_ts: str | None = None) -> None:
        """Replace the plan's buttons with what became of it. `plan_ts`: the plan message
        clicked, for a click that came before the plan's ts was saved."""
        plan_ts = plan_ts or self.plan_message_ts
        if plan_ts is None or task.plan is None:
            return
        message = views.plan_decided(
            TaskSummary.of(task),
            Plan.model_validate(task.plan),
            plan_url=f"{task.pr_url}/files" if task.pr_url else None,
            cost_usd=task.cost_usd,
            note=note,
        )
        await self.edit(plan_ts, message)

    async def upload(self, *, filename: str, content: str, title: str) -> None:
        assert self.thread_ts is not None
        await self.threads.upload(
            self.channel, self.thread_ts, filename=filename, content=content, title=title
        )

    async def permalink(self) -> str | None:
        assert self.thread_ts is not None
        return await self.threads.permalink(self.channel, self.thread_ts)

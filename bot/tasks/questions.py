"""An agent's questions in its task's thread, and the approvers' answers.

A question waits for its answer on an in-process event, set when the answer arrives in this
process; an answer that reached another replica is found by a slower poll of the database.
"""

from __future__ import annotations

import asyncio
import contextlib

from bot import views
from bot.config import Settings
from bot.policy import ApprovalPolicy
from bot.tasks.store import TaskStore
from bot.tasks.thread import TaskThread
from storage.tables import Task

ANSWER_POLL_S = 5.0  # how often a waiting question looks for an answer given on another replica


class Questions:
    def __init__(self, settings: Settings, store: TaskStore, policy: ApprovalPolicy) -> None:
        self.settings = settings
        self.store = store
        self.policy = policy
        self._answered: dict[int, asyncio.Event] = {}  # question id -> set on its answer

    async def ask(self, task: Task, thread: TaskThread, question: str) -> str | None:
        """Post an agent's question in the thread; the answer, or None after the timeout."""
        timeout = self.settings.question_timeout_s
        message = views.question_message(question, self.settings.approvers, timeout)
        # Saved before it is posted: a reply that comes at once finds an open question.
        question_id = await self.store.add_question(task.id, question)
        answered = self._answered[question_id] = asyncio.Event()
        try:
            await self.store.question_posted(question_id, await thread.reply(message))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while (answer := await self.store.answer_of(question_id)) is None:
                left = deadline - loop.time()
                if left <= 0:
                    break
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, ANSWER_POLL_S)):
                        await answered.wait()
        finally:
            self._answered.pop(question_id, None)
        if answer is not None:
            return answer
        await self.store.close_question(question_id)
        await thread.reply(views.question_unanswered())
        return None

    async def answer(self, task: Task, user: str, text: str) -> bool:
        """Take an approver's reply as the answer to the task's open question, if any."""
        if not self.policy.may_approve(user):
            return False
        question_id = await self.store.answer_open_question(task.id, user, text)
        if question_id is None:
            return False
        if (answered := self._answered.get(question_id)) is not None:
            answered.set()
        return True

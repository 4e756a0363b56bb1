"""Fixbot in conversation: Sentry alerts in channels, `@fixbot` mentions, thread replies.

Handlers and webhooks translate what arrives into calls here; this module decides what
it means (one task per Sentry issue, which mention does what) and asks the workflow to
act. Everything people or alerts wrote is untrusted: it is escaped where it is echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot import views
from bot.aftermerge import AfterMerge, CameBack
from bot.alerts import SentryAlert, recognise_message
from bot.config import Settings
from bot.dashboard import TaskSummary
from bot.errors import BadReference, InvalidTransition
from bot.models import Reference, RefKind, State
from bot.refs import REPO_WORD, names_a_reference, parse_reference
from bot.seams import Threads
from bot.tasks import PRIORITY_URGENT, Decision, Workflow, priority_for_level
from bot.tasks.thread import TaskThread
from repos.errors import FixbotError
from storage.tables import Alert, Task
from storage.triggers import first_delivery

log = logging.getLogger(__name__)

NOTE_COALESCE_S = 1.0  # repeats within this window update the "seen again" note once
COMMANDS = ("fix", "approve", "reject", "cancel", "retry", "status", "help")
_MENTION = re.compile(r"<@[UW][A-Z0-9]+>")


@dataclass(frozen=True)
class Reply:
    """What Fixbot answers a person privately (an ephemeral message), if anything."""

    text: str


class Conversation:
    """Alerts, mentions and replies, turned into workflow calls."""

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        threads: Threads,
        workflow: Workflow,
        after_merge: AfterMerge,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.threads = threads
        self.workflow = workflow
        self.after_merge = after_merge
        self._notes: dict[int, asyncio.Task[None]] = {}
        self._repeated: set[int] = set()  # alerts counted since their note last read them

    # Alerts

    async def on_alert(
        self, alert: SentryAlert, *, channel: str, message_ts: str | None
    ) -> Task | None:
        """One task per Sentry issue: the first alert offers (or starts) a fix, repeats count.

        `message_ts` None (a webhook): Fixbot posts the alert's message itself when needed.
        """
        row, first = await self._record(alert, channel, message_ts)
        came_back = await self.after_merge.came_back(alert, row.id)
        if came_back is not None:  # Fixbot's fix of it was merged: its own thread hears it
            if came_back == CameBack.KNOWN:
                self._schedule_note(row.id)
            return None
        previous = await self._task(row.task_id)
        regression_of: str | None = None
        if not first:
            if previous is not None and previous.state == State.DONE and previous.pr_url:
                regression_of = previous.pr_url  # it came back after Fixbot's fix
            else:
                self._schedule_note(row.id)
                return None
        if message_ts is None or regression_of is not None:
            message_ts = message_ts or await self.threads.post(
                channel, views.note(_alert_line(alert))
            )
            row = await self._restart(row, channel, message_ts)
        if self.settings.auto_plan:
            task = await self._start(row, alert, user=None)
            if regression_of:
                thread = TaskThread.of(self.threads, task)
                await thread.reply(views.regression_note(regression_of))
            return task
        offer = views.alert_offer(row.id, alert.title, alert.ref_key, regression_of=regression_of)
        offer_ts = await self.threads.post(channel, offer, thread_ts=message_ts)
        await self._save_alert(row.id, offer_ts=offer_ts)
        return None

    async def plan_alert(self, alert_id: int, user: str, *, offer_ts: str | None = None) -> Task:
        """`Plan a fix`: start the task for an alert, once, whichever replica gets the click.

        `offer_ts` is the clicked message's: a click can come before the offer's ts is saved.
        """
        async with self.sessions() as session:
            row = await session.get(Alert, alert_id)
        if row is None:
            raise InvalidTransition("That alert is not one I know any more.")
        if row.task_id is not None:
            task = await self._task(row.task_id)
            if task is not None and not State(task.state).finished:
                raise InvalidTransition("A fix for this issue is already under way.")
            if task is not None and task.state == State.DONE:
                raise InvalidTransition("This issue was fixed already.")
        # One task per Sentry issue and alert thread (a regression gets a new thread).
        if not await first_delivery(self.sessions, "alert", f"{row.sentry_issue}:{row.message_ts}"):
            raise InvalidTransition("A fix for this issue is already under way.")
        alert = SentryAlert(
            issue_id=row.sentry_issue if row.sentry_issue.isdigit() else None,
            short_id=row.short_id,
            url=row.url,
            title=row.title,
        )
        return await self._start(row, alert, user=user, offer_ts=offer_ts)

    async def _start(
        self, row: Alert, alert: SentryAlert, *, user: str | None, offer_ts: str | None = None
    ) -> Task:
        assert row.channel_id and row.message_ts
        ref = Reference(RefKind.SENTRY, alert.ref_key, url=alert.url)
        task = await self.workflow.create_task(
            ref,
            channel=row.channel_id,
            thread_ts=row.message_ts,
            user=user,
            priority=PRIORITY_URGENT if user else priority_for_level(alert.level),
        )
        await self._save_alert(row.id, task_id=task.id)
        if offer_ts := offer_ts or row.offer_ts:
            taken = views.alert_offer_taken(alert.title, alert.ref_key, user)
            await self.threads.update(row.channel_id, offer_ts, taken)
        return task

    async def _record(
        self, alert: SentryAlert, channel: str, message_ts: str | None
    ) -> tuple[Alert, bool]:
        """Insert the issue's alert row, or count a repeat; True when this is the first."""
        try:
            async with self.sessions.begin() as session:
                row = Alert(
                    sentry_issue=alert.key,
                    short_id=alert.short_id,
                    url=alert.url,
                    title=alert.title,
                    channel_id=channel,
                    message_ts=message_ts,
                    count=1,
                )
                session.add(row)
            return row, True
        except IntegrityError:
            pass
        async with self.sessions.begin() as session:
            await session.execute(
                update(Alert)
                .where(Alert.sentry_issue == alert.key)
                .values(count=Alert.count + 1, last_seen=datetime.now(UTC))
            )
            found = await session.scalar(select(Alert).where(Alert.sentry_issue == alert.key))
        assert found is not None
        return found, False

    async def _restart(self, row: Alert, channel: str, message_ts: str) -> Alert:
        """A regression (or a webhook's first alert): the issue gets a fresh thread."""
        values = {
            "channel_id": channel,
            "message_ts": message_ts,
            "count": 1,
            "offer_ts": None,
            "note_ts": None,
        }
        if row.task_id is not None:
            values["task_id"] = None
        await self._save_alert(row.id, **values)
        for key, value in values.items():
            setattr(row, key, value)
        return row

    def _schedule_note(self, alert_id: int) -> None:
        """Coalesce an alert storm into one "seen again" note edited in place."""
        self._repeated.add(alert_id)
        if alert_id not in self._notes:  # else the running update looks again before it ends
            self._notes[alert_id] = asyncio.create_task(self._update_note(alert_id))

    async def _update_note(self, alert_id: int) -> None:
        try:
            # Repeats counted while the note was being written get one more look.
            while alert_id in self._repeated:
                await asyncio.sleep(NOTE_COALESCE_S)
                self._repeated.discard(alert_id)
                await self._write_note(alert_id)
        finally:  # with no await after the last look: a repeat now starts a new update
            self._notes.pop(alert_id, None)

    async def _write_note(self, alert_id: int) -> None:
        async with self.sessions() as session:
            row = await session.get(Alert, alert_id)
        if row is None or not row.channel_id or not row.message_ts:
            return
        note = views.seen_again(row.count - 1)
        try:
            if row.note_ts:
                await self.threads.update(row.channel_id, row.note_ts, note)
            else:
                ts = await self.threads.post(row.channel_id, note, thread_ts=row.message_ts)
                await self._save_alert(alert_id, note_ts=ts)
        except Exception:  # a lost note must not lose the count; the next repeat retries
            log.exception("could not update the seen-again note of alert %s", alert_id)

    async def _save_alert(self, alert_id: int, **values: Any) -> None:
        async with self.sessions.begin() as session:
            await session.execute(update(Alert).where(Alert.id == alert_id).values(**values))

    async def _task(self, task_id: int | None) -> Task | None:
        if task_id is None:
            return None
        async with self.sessions() as session:
            return await session.get(Task, task_id)

    async def aclose(self) -> None:
        for task in list(self._notes.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # Messages and mentions

    def alert_in(self, message: dict[str, Any]) -> SentryAlert | None:
        """The Sentry alert in a message of an alert channel, if it is one."""
        if message.get("channel") not in self.settings.alert_channels:
            return None
        return recognise_message(message, sentry_url=self.settings.sentry_url)

    async def on_reply(self, channel: str, thread_ts: str, user: str, text: str) -> None:
        """A person's reply in a thread: feedback or an answer when the thread is a task's."""
        task = await self.workflow.task_in_thread(channel, thread_ts)
        if task is not None:
            await self.workflow.take_reply(task, user, text)

    async def on_mention(
        self,
        *,
        channel: str,
        ts: str,
        thread_ts: str | None,
        user: str,
        text: str,
        bot_user_id: str | None,
    ) -> Reply | None:
        """`@fixbot <command>`; returns what to tell the person privately, if anything."""
        words = _MENTION.sub(" ", text).split()
        command = words[0].lower().strip(".,!:") if words else "help"
        if command not in COMMANDS or command == "help":
            return Reply(views.MENTION_HELP)
        where = thread_ts or ts
        task = await self.workflow.task_in_thread(channel, where)
        try:
            if command == "fix":
                if task is not None and not State(task.state).finished:
                    return Reply("This thread already has a task; see its messages above.")
                named = " ".join(words[1:])
                ref = (
                    parse_reference(named, self.settings)
                    if names_a_reference(named)
                    else await self._thread_reference(channel, where, bot_user_id)
                )
                await self.workflow.request_fix(ref, channel=channel, thread_ts=where, user=user)
                return None
            if task is None:
                return Reply(
                    "There is no Fixbot task in this thread. `@fixbot fix` starts one. "
                    + views.MENTION_HELP
                )
            if command == "status":
                await self.threads.post(
                    channel, views.task_status(TaskSummary.of(task)), thread_ts=where
                )
                return None
            verbs = {
                "approve": self.workflow.approve,
                "reject": self.workflow.reject,
                "cancel": self.workflow.cancel,
                "retry": self.workflow.retry,
            }
            await verbs[command](Decision(task_id=task.id, user=user))
        except FixbotError as error:
            return Reply(str(error))
        return None

    async def _thread_reference(
        self, channel: str, thread_ts: str, bot_user_id: str | None
    ) -> Reference:
        """What `@fixbot fix` is about: a Sentry issue in the thread, else its text."""
        messages = await self.threads.replies(channel, thread_ts)
        if self.settings.sentry_enabled:
            for message in messages:
                alert = recognise_message(message, sentry_url=self.settings.sentry_url)
                if alert is not None:
                    return Reference(RefKind.SENTRY, alert.ref_key, url=alert.url)
        texts = [
            _MENTION.sub(" ", str(m.get("text") or "")).strip()
            for m in messages
            if m.get("user") != bot_user_id and not m.get("bot_id")
        ]
        text = "\n\n".join(t for t in texts if t)
        repo_name = next((m.group(1) for t in texts if (m := REPO_WORD.search(t))), None)
        if repo_name is None and len(self.settings.repos) == 1:
            repo_name = self.settings.repos[0].name
        repo = self.settings.repo(repo_name or "")
        if repo is None:
            known = ", ".join(f"`{r.name}`" for r in self.settings.repos) or "none"
            raise BadReference(
                "Say which repository with `repo:owner/name` in the thread. Known: " + known
            )
        description = REPO_WORD.sub(" ", text).strip()
        fix_word = re.compile(r"^\s*fix\b", re.IGNORECASE)
        description = fix_word.sub("", description).strip()
        if not description:
            raise BadReference("The thread does not say what is wrong; describe it and ask again.")
        return Reference(RefKind.TEXT, description[:4000], repo=repo.name)


def _alert_line(alert: SentryAlert) -> str:
    what = views.escape(" ".join((alert.title or alert.ref_key).split()))[:300]
    ref = views.link(alert.url, alert.ref_key) if alert.url else views.escape(alert.ref_key)
    verb = "regressed" if alert.regressed else "new issue"
    return f":rotating_light: Sentry {verb} {ref}: *{what}*"

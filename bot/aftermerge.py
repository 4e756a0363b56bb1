"""After a task's pull request is merged: close the loop, watch the fix, hear regressions.

On the merge (GitHub's webhook) a `fix_watches` row and an `after_merge` job are made.
That job resolves the Sentry issue (in the merge commit, else in the next release), moves
the Jira issue to `jira_done_transition` with a comment linking the pull request, and
updates the thread's parent and App Home. Then `after_merge` jobs, each a row with its own
`run_after`, check the issue's events every `limits.verify_check_interval_s` for
`verify_window_hours`: counted from the first deploy of the release carrying the merge
commit when Sentry's release data has commits, else from the merge. The thread hears the
verdict: no new events (held), or still seen with `Plan again`. An alert or a regressed
webhook for an issue whose fix was merged reopens the original thread, not a new one.

The watch's state is its row, never a coroutine: a restart finds the queued job and goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select, update

from bot import views
from bot.alerts import SentryAlert
from bot.config import Settings
from bot.errors import InvalidTransition
from bot.integrations import IntegrationError
from bot.integrations.jira import JiraClient
from bot.integrations.sentry import SentryClient, SentryEvent, SentryRelease
from bot.jobs import Outcome
from bot.models import Reference, RefKind, State, Watch
from bot.redact import Redactor
from bot.seams import JobControl, Threads
from bot.sources import Sources, TaskContext
from bot.tasks.thread import TaskThread
from repos.workspace import branch_name
from storage.jobs import JobKind
from storage.queue import JobQueue
from storage.tables import Alert, FixWatch, Job, Task, aware

if TYPE_CHECKING:
    from bot.tasks.lifecycle import Lifecycle
    from bot.tasks.store import TaskStore

log = logging.getLogger(__name__)

RELEASES_CHECKED = 10  # how many of a project's newest releases may carry the merged fix
EVENTS_IN_CONTEXT = 10  # events listed for the next plan


REOPENABLE = (Watch.CLOSED, Watch.WATCHING, Watch.HELD, Watch.NOT_HELD, Watch.UNRELEASED)
REPLANNABLE = (Watch.NOT_HELD, Watch.REGRESSED)


class CameBack(StrEnum):
    """What an alert about an issue whose fix was merged led to."""

    REOPENED = "reopened"  # its thread was told, with Plan again
    KNOWN = "known"  # the thread knows already: count it as seen again


class AfterMerge:
    """The merge's follow-up of the tasks: its jobs, its Plan again, its regressions."""

    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        lifecycle: Lifecycle,
        threads: Threads,
        jobs: JobControl,
        *,
        sources: Sources,
        jira: JiraClient | None,
        redactor: Redactor,
        changed: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.sessions = store.sessions
        self.lifecycle = lifecycle
        self.threads = threads
        self.jobs = jobs
        self.sources = sources
        self.jira = jira
        self.redact = redactor
        self.changed = changed  # a watch moved: App Home republishes

    @property
    def sentry(self) -> SentryClient | None:
        return self.sources.sentry

    @property
    def window(self) -> str:
        return views.fmt_window(self.settings.verify_window_hours)

    # The merge

    async def merged(self, task: Task, *, merge_commit: str | None, by: str | None) -> None:
        """A done task's pull request was merged: record the watch and queue its first step."""
        if task.state != State.DONE or task.pr_url is None:
            return
        now = _now()
        async with self.sessions.begin() as session:
            seen = await session.scalar(
                select(FixWatch.id).where(
                    FixWatch.task_id == task.id, FixWatch.pr_url == task.pr_url
                )
            )
            if seen is not None:
                return
            session.add(
                FixWatch(
                    task_id=task.id,
                    status=Watch.CLOSING,
                    pr_url=task.pr_url,
                    merge_commit=merge_commit,
                    merged_by=by,
                    merged_at=now,
                    window_ends_at=now + timedelta(hours=self.settings.verify_window_hours),
                    short_id=task.ref_key.upper() if task.ref_kind == RefKind.SENTRY else None,
                    checks=0,
                )
            )
            JobQueue.enqueue(session, task.id, JobKind.AFTER_MERGE, task.priority)
        self.jobs.wake()

    async def run_job(self, job: Job) -> Outcome:
        """One step of the task's newest watch: close the loop, or check the events."""
        async with self.sessions() as session:
            task = await session.get(Task, job.task_id)
            watch = await session.scalar(
                select(FixWatch)
                .where(FixWatch.task_id == job.task_id)
                .order_by(FixWatch.id.desc())
                .limit(1)
            )
        if task is None or watch is None:
            return Outcome.skipped("no task or watch any more")
        _with_aware_times(watch)
        if watch.status == Watch.CLOSING:
            await self._close_loop(task, watch)
        elif watch.status == Watch.WATCHING:
            await self._check(task, watch)
        else:
            log.info("after-merge job %s: the watch is %s; nothing to do", job.id, watch.status)
            return Outcome.skipped(f"the watch is {watch.status}")
        return Outcome.done()

    async def _close_loop(self, task: Task, watch: FixWatch) -> None:
        done = [f"Pull request {views.link(watch.pr_url, watch.pr_url)} merged."]
        values: dict[str, Any] = {"status": Watch.CLOSED}
        if task.ref_kind == RefKind.SENTRY and self.sentry is not None:
            try:  # a failed resolve still leaves the issue to watch, once its id is known
                issue_id = await self.sentry.group_id(task.ref_key)
                values = {"status": Watch.WATCHING, "sentry_issue": issue_id}
                how = await self.sentry.resolve_issue(
                    issue_id, commit=watch.merge_commit, repository=task.repo
                )
            except IntegrationError as error:
                done.append(f":warning: {views.escape(str(error))}")
            else:
                done.append(f"Sentry {views.inline_code(task.ref_key)} resolved {how}.")
                values["resolved_how"] = how
        if task.ref_kind == RefKind.JIRA and self.jira is not None:
            done.append(await self._close_jira(task, watch))
        watching = None
        if values["status"] == Watch.WATCHING:
            watching = (
                f"Watching {views.inline_code(task.ref_key)} in Sentry for {self.window}; "
                "the verdict comes here."
            )
        if not await self._move(watch, Watch.CLOSING, **values):
            return
        if values["status"] == Watch.WATCHING:
            await self._schedule_check(task, watch)
        await TaskThread.of(self.threads, task).reply(views.loop_closed(done, watching))
        await self._update_parent(task, watch)

    async def _close_jira(self, task: Task, watch: FixWatch) -> str:
        assert self.jira is not None
        jira, key = self.jira, task.ref_key
        commit = f" (merge commit {watch.merge_commit[:12]})" if watch.merge_commit else ""
        comment = f"The fix was merged: {watch.pr_url}{commit}."
        try:
            await jira.add_comment(key, self.redact(comment))
            moved = ""
            if self.settings.jira_done_transition:
                transition = await jira.transition(key, self.settings.jira_done_transition)
                moved = f" moved to {views.escape(transition.to_status or transition.name)},"
        except IntegrationError as error:
            return f":warning: {views.escape(str(error))}"
        return f"Jira {views.inline_code(key)}{moved} commented with the pull request."

    # Watching

    async def _check(self, task: Task, watch: FixWatch) -> None:
        """Count the issue's events after the fix; report when some came or the window ended."""
        if self.sentry is None or watch.sentry_issue is None:  # Sentry was unset meanwhile
            await self._move(watch, Watch.WATCHING, status=Watch.CLOSED)
            return
        now = _now()
        try:
            release, judged = await self._release_of(watch)
            since = release.released_at if release and release.released_at else watch.merged_at
            events = (
                await self.sentry.issue_events(watch.sentry_issue, start=since) if judged else []
            )
            before = watch.events_before
            if before is None:
                window = watch.window_ends_at - watch.merged_at
                earlier = await self.sentry.issue_events(
                    watch.sentry_issue, start=watch.merged_at - window, end=watch.merged_at
                )
                before = len(earlier)
        except IntegrationError as error:
            log.warning("checking the fix of task %s failed: %s", task.id, error)
            if now < watch.window_ends_at:
                await self._schedule_check(task, watch)
                return
            note = views.note(f":warning: {views.escape(str(error))}")
            await self._verdict(task, watch, Watch.UNCHECKED, note)
            return
        facts: dict[str, Any] = {
            "checks": watch.checks + 1,
            "checked_at": now,
            "events_before": before,
            "events_since": len(events),
            "release": release.version if release else None,
            "released_at": since if release else None,
        }
        words = f"since release `{views.escape(release.version)}`" if release else "since the merge"
        if events:
            message = views.fix_not_held(watch.id, len(events), words, watch.pr_url)
            await self._verdict(task, watch, Watch.NOT_HELD, message, **facts)
        elif now < watch.window_ends_at:
            if await self._move(watch, Watch.WATCHING, **facts):
                await self._schedule_check(task, watch)
        elif judged:
            message = views.fix_held(self.window, words, before)
            await self._verdict(task, watch, Watch.HELD, message, **facts)
        else:
            message = views.fix_unreleased(self.window, watch.merge_commit)
            await self._verdict(task, watch, Watch.UNRELEASED, message, **facts)

    async def _release_of(self, watch: FixWatch) -> tuple[SentryRelease | None, bool]:
        """The release carrying the merge commit, and whether events can be judged yet:
        not while Sentry tracks commits in releases but none carries this one."""
        assert self.sentry is not None and watch.sentry_issue is not None
        if watch.merge_commit is None:
            return None, True
        project = (await self.sentry.get_issue(watch.sentry_issue)).project_slug
        tracked = [r for r in await self.sentry.project_releases(project) if r.commit_count]
        for release in tracked[:RELEASES_CHECKED]:
            commits = await self.sentry.release_commits(release.version)
            if any(commit.startswith(watch.merge_commit) for commit in commits):
                deployed = await self.sentry.first_deploy(release.version)
                if deployed is not None:  # the fix is live from its first deploy on
                    release = release.model_copy(update={"released_at": deployed})
                return release, True
        return None, not tracked

    async def _schedule_check(self, task: Task, watch: FixWatch) -> None:
        interval = timedelta(seconds=self.settings.limits.verify_check_interval_s)
        async with self.sessions.begin() as session:
            job = JobQueue.enqueue(session, task.id, JobKind.AFTER_MERGE, task.priority)
            job.run_after = min(_now() + interval, watch.window_ends_at)

    async def _verdict(
        self, task: Task, watch: FixWatch, status: Watch, message: views.Message, **facts: Any
    ) -> None:
        if not await self._move(watch, Watch.WATCHING, status=status, **facts):
            return
        ts = await TaskThread.of(self.threads, task).reply(message)
        await self._move(watch, status, report_ts=ts)
        await self._update_parent(task, watch)

    # Regressions and planning again

    async def came_back(self, alert: SentryAlert, alert_id: int) -> CameBack | None:
        """An alert (message or webhook) for an issue: if Fixbot's fix of it was merged, its
        original thread hears of it. None when no merged fix is known for the issue."""
        keys = [FixWatch.sentry_issue == alert.issue_id] if alert.issue_id else []
        if alert.short_id:
            keys.append(FixWatch.short_id == alert.short_id.upper())
        if not keys:
            return None
        async with self.sessions() as session:
            watch = await session.scalar(
                select(FixWatch).where(or_(*keys)).order_by(FixWatch.id.desc()).limit(1)
            )
            task = await session.get(Task, watch.task_id) if watch is not None else None
        if watch is None or task is None or task.thread_ts is None:
            return None
        _with_aware_times(watch)
        newest = await self.store.in_thread(task.channel_id, task.thread_ts)
        current = newest.id if newest is not None else task.id
        await self._point_alert(alert_id, task, current)
        if current != task.id or not await self._move(watch, *REOPENABLE, status=Watch.REGRESSED):
            return CameBack.KNOWN
        ref = alert.ref_key or task.ref_key
        message = views.came_back(watch.id, ref, watch.pr_url, regressed=alert.regressed)
        ts = await TaskThread.of(self.threads, task).reply(message)
        await self._move(watch, Watch.REGRESSED, report_ts=ts)
        await self._update_parent(task, watch)
        return CameBack.REOPENED

    async def _point_alert(self, alert_id: int, task: Task, current_task_id: int) -> None:
        """The issue's alert row now belongs to the original thread (repeats are noted there);
        an alert message elsewhere gets a pointer to it."""
        async with self.sessions() as session:
            row = await session.get(Alert, alert_id)
        if row is None:
            return
        if row.channel_id and row.message_ts and row.message_ts != task.thread_ts:
            url = await self.threads.permalink(task.channel_id, task.thread_ts or "")
            where = views.link(url, "its thread") if url else "its thread"
            line = f":leftwards_arrow_with_hook: Fixbot fixed this issue before; see {where}."
            await self.threads.post(row.channel_id, views.note(line), thread_ts=row.message_ts)
        async with self.sessions.begin() as session:
            await session.execute(
                update(Alert)
                .where(Alert.id == alert_id)
                .values(
                    task_id=current_task_id,
                    channel_id=task.channel_id,
                    message_ts=task.thread_ts,
                    note_ts=None,
                )
            )

    async def plan_again(self, watch_id: int, user: str, *, verdict_ts: str | None = None) -> Task:
        """`Plan again`: a new plan in the same thread, told the earlier plan, pull request
        and the events since (as untrusted data). `verdict_ts` is the clicked message: a click
        can come before the verdict's ts is saved."""
        async with self.sessions() as session:
            watch = await session.get(FixWatch, watch_id)
            task = await session.get(Task, watch.task_id) if watch is not None else None
        if watch is None or task is None:
            raise InvalidTransition("That button belongs to a fix I do not know.")
        _with_aware_times(watch)
        verdict = _verdict_words(watch)
        if not await self._move(watch, *REPLANNABLE, status=Watch.REPLANNING):
            raise InvalidTransition("Planning again is already under way in this thread.")
        events = await self._recent_events(watch)
        known = TaskContext(
            title=task.title,
            repo=task.repo,
            url=task.ref_url,
            text=earlier_fix_context(task, watch, verdict, events),
        )
        ref = Reference(RefKind(task.ref_kind), task.ref_key, url=task.ref_url, repo=task.repo)
        again = await self.lifecycle.create_task(
            ref,
            channel=task.channel_id,
            thread_ts=task.thread_ts,
            user=user,
            context=known,
            branch=branch_name(f"{task.ref_key}-r{watch.id}", task.title),
        )
        await self._move(watch, Watch.REPLANNING, replan_task_id=again.id)
        async with self.sessions.begin() as session:
            await session.execute(
                update(Alert).where(Alert.task_id == task.id).values(task_id=again.id)
            )
        report_ts = verdict_ts or watch.report_ts
        if report_ts:
            taken = views.planning_again(views.escape(verdict), user)
            await self.threads.update(task.channel_id, report_ts, taken)
        return again

    async def _recent_events(self, watch: FixWatch) -> list[SentryEvent]:
        if self.sentry is None or watch.sentry_issue is None:
            return []
        since = watch.released_at or watch.merged_at
        try:
            return await self.sentry.issue_events(watch.sentry_issue, start=since)
        except IntegrationError as error:
            log.warning("could not read the events since the fix: %s", error)
            return []

    # Helpers

    async def _move(self, watch: FixWatch, *expect: Watch, **values: Any) -> bool:
        """Update the watch if its status is still one of `expect` (a guarded write)."""
        async with self.sessions.begin() as session:
            changed = await session.execute(
                update(FixWatch)
                .where(FixWatch.id == watch.id, FixWatch.status.in_([str(s) for s in expect]))
                .values(**values)
            )
        if not changed.rowcount:  # type: ignore[attr-defined]
            return False
        for key, value in values.items():
            setattr(watch, key, value)
        self.changed()
        return True

    async def _update_parent(self, task: Task, watch: FixWatch) -> None:
        thread = TaskThread.of(self.threads, task)
        await thread.update_parent(task, _parent_line(watch, self.window))


def earlier_fix_context(
    task: Task, watch: FixWatch, verdict: str, events: Sequence[SentryEvent]
) -> str:
    """The error report for planning again: the first report, the merged fix, what came
    after it, and the earlier plan. All of it goes to the model as untrusted data."""
    commit = f", merge commit {watch.merge_commit}" if watch.merge_commit else ""
    lines = [
        task.context.rstrip(),
        "",
        "## Fixbot fixed this before, and the fix did not hold",
        "",
        f"- Earlier pull request (merged): {watch.pr_url}{commit}",
        f"- After the merge: {verdict}",
    ]
    if events:
        lines += ["", f"### Events since the fix (newest first, {len(events)} shown)", ""]
        for event in events[:EVENTS_IN_CONTEXT]:
            when = event.timestamp.strftime("%Y-%m-%d %H:%M:%SZ") if event.timestamp else "?"
            what = event.message or (event.exceptions[-1].summary if event.exceptions else "")
            lines.append(f"- {when} · release {event.release or '?'} · {what}".rstrip(" ·"))
    if task.plan_markdown:
        lines += ["", f"### The earlier plan (v{task.plan_version})", "", task.plan_markdown]
    return "\n".join(lines).strip() + "\n"


def _verdict_words(watch: FixWatch) -> str:
    since = f"since release {watch.release}" if watch.release else "since the merge"
    if watch.status == Watch.REGRESSED:
        return "Sentry marked the issue regressed."
    return f"Still seen: {watch.events_since or 0} events {since}; the fix did not hold."


def _parent_line(watch: FixWatch, window: str) -> str:
    until = f"{watch.window_ends_at:%Y-%m-%d %H:%M} UTC"
    return {
        Watch.CLOSING: ":tada: Merged.",
        Watch.CLOSED: ":tada: Merged.",
        Watch.WATCHING: f":eyes: Merged; watching the error in Sentry until {until}.",
        Watch.HELD: f":large_green_circle: Merged; no new events in {window}: the fix held.",
        Watch.NOT_HELD: ":red_circle: Merged, but the error is still seen: the fix did not hold.",
        Watch.UNRELEASED: ":grey_question: Merged; no release carrying it reached Sentry yet.",
        Watch.UNCHECKED: ":warning: Merged; Sentry could not be checked.",
        Watch.REGRESSED: ":leftwards_arrow_with_hook: Merged, but Sentry marks it regressed.",
        Watch.REPLANNING: ":repeat: Merged, then planned again in this thread.",
    }[Watch(watch.status)]


def _with_aware_times(watch: FixWatch) -> None:
    """A loaded watch's times in UTC, whatever the database handed back."""
    watch.merged_at = aware(watch.merged_at)
    watch.window_ends_at = aware(watch.window_ends_at)
    if watch.released_at is not None:
        watch.released_at = aware(watch.released_at)


def _now() -> datetime:
    return datetime.now(UTC)

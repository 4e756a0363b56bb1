"""What a task is about: turning a Reference into a title, a repository and error context."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from bot.config import Settings
from bot.errors import BadReference
from bot.integrations import IntegrationError
from bot.integrations.github import GitHubClient
from bot.integrations.jira import JiraClient
from bot.integrations.sentry import SentryClient
from bot.models import Reference, RefKind
from bot.refs import JIRA_KEY, UnmappedJiraProject

log = logging.getLogger(__name__)

# HTTP statuses that mean the reference names nothing Fixbot can use (a retry won't help).
UNUSABLE = {401, 403, 404}


@dataclass(frozen=True)
class TaskContext:
    """Everything the planning step is told about the error (all of it untrusted)."""

    title: str
    repo: str | None
    url: str | None
    text: str
    sentry_project: str | None = None
    level: str | None = None


class UnmappedProject(BadReference):
    """A Sentry project no repository in fixbot.yml claims."""

    def __init__(self, project: str) -> None:
        super().__init__(
            f"The Sentry project `{project}` is not mapped to a repository: add it to "
            "`sentry_projects` of a repo in fixbot.yml."
        )
        self.project = project


class Sources:
    """The vendor clients Fixbot reads error context from."""

    def __init__(
        self,
        settings: Settings,
        sentry: SentryClient | None,
        github: GitHubClient | None,
        jira: JiraClient | None,
    ) -> None:
        self.settings = settings
        self.sentry = sentry
        self.github = github
        self.jira = jira

    async def look_up(self, ref: Reference, *, within_s: float) -> TaskContext | None:
        """Resolve a reference before anything is posted about it.

        Raises BadReference (saying what to do) when it names nothing usable: not found, no
        access, a project no repository claims. None when the vendor did not answer in time
        or failed for a passing reason: the task starts and its planning step tries again.
        """
        try:
            async with asyncio.timeout(within_s):
                return await self.resolve(ref)
        except TimeoutError:
            log.warning("looking up %s took more than %.0f s; starting anyway", ref.key, within_s)
            return None
        except IntegrationError as error:
            if error.status not in UNUSABLE:
                log.warning("looking up %s failed for now (%s); starting anyway", ref.key, error)
                return None
            raise BadReference(_unusable(ref, error)) from error

    async def resolve(self, ref: Reference) -> TaskContext:
        """Fetch what the reference names; raises BadReference or IntegrationError."""
        match ref.kind:
            case RefKind.SENTRY:
                return await self._sentry(ref)
            case RefKind.GITHUB:
                return await self._github(ref)
            case RefKind.JIRA:
                return await self._jira(ref)
            case RefKind.TEXT:
                return TaskContext(title=ref.key[:150], repo=ref.repo, url=None, text=ref.key)

    async def _sentry(self, ref: Reference) -> TaskContext:
        if self.sentry is None:
            raise BadReference("Sentry is not set up: set SENTRY_AUTH_TOKEN and SENTRY_ORG.")
        try:
            context = await self.sentry.error_context(ref.key)
        except IntegrationError as error:
            if error.status == 404 and JIRA_KEY.match(ref.key) and self.jira is not None:
                await self._unmapped_jira_issue(ref.key)
            raise
        project = context.issue.project_slug
        repo = next((r.name for r in self.settings.repos if project in r.sentry_projects), None)
        if repo is None:
            raise UnmappedProject(project)
        return TaskContext(
            title=context.issue.title,
            repo=repo,
            url=context.issue.permalink or ref.url,
            text=context.render(),
            sentry_project=project,
            level=context.issue.level,
        )

    async def _unmapped_jira_issue(self, key: str) -> None:
        """A key Sentry does not know may be a Jira issue of a project no repo claims."""
        try:
            await self.jira.get_issue(key)  # type: ignore[union-attr]
        except IntegrationError:
            return  # not that either: Sentry's "not found" stands
        raise UnmappedJiraProject(key.rpartition("-")[0])

    async def _github(self, ref: Reference) -> TaskContext:
        if self.github is None:
            raise BadReference("GitHub is not set up: set GITHUB_TOKEN.")
        repo, number = ref.key.split("#")
        owner, name = repo.split("/")
        issue = await self.github.get_issue(owner, name, int(number))
        labels = ", ".join(issue.labels) or "none"
        text = f"## GitHub issue {ref.key}: {issue.title}\n\nLabels: {labels}\n\n{issue.body}"
        return TaskContext(title=issue.title, repo=repo, url=issue.html_url, text=text)

    async def _jira(self, ref: Reference) -> TaskContext:
        if self.jira is None:
            raise BadReference("Jira is not set up: set JIRA_URL, JIRA_EMAIL and JIRA_API_TOKEN.")
        issue = await self.jira.get_issue(ref.key)
        text = f"## Jira issue {ref.key}: {issue.summary}\n\n{issue.description}"
        return TaskContext(title=issue.summary, repo=ref.repo, url=issue.url, text=text)


def _unusable(ref: Reference, error: IntegrationError) -> str:
    """What a person reads when a reference names nothing Fixbot can use, and what to do."""
    if error.status == 401:
        return f"{error} Until then Fixbot cannot look up `{ref.key}`."
    if error.status == 403:
        return (
            f"{error.service} would not let Fixbot read `{ref.key}` (no access): give "
            f"Fixbot's {error.service} token access to it."
        )
    how = {
        RefKind.SENTRY: "copy the short id or the URL from the issue's page in Sentry",
        RefKind.GITHUB: "check the repository and the number",
        RefKind.JIRA: "check the key on the issue's page in Jira",
    }.get(RefKind(ref.kind), "check the reference")
    return f"{error.service} has no `{ref.key}` that Fixbot can see (not found): {how}."

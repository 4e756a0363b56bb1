"""What a task is about: turning a Reference into a title, a repository and error context."""

from __future__ import annotations

from dataclasses import dataclass

from bot.config import Settings
from bot.errors import BadReference
from bot.integrations.github import GitHubClient
from bot.integrations.jira import JiraClient
from bot.integrations.sentry import SentryClient
from bot.models import Reference, RefKind


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
        super().__init__(f"The Sentry project `{project}` is not mapped to a repository.")
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
        context = await self.sentry.error_context(ref.key)
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

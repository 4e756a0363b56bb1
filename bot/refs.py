"""Parsing what people type after `/fix` into a Reference."""

from __future__ import annotations

import re
from urllib.parse import urlparse

from bot.config import Settings
from bot.errors import BadReference
from bot.integrations.sentry import parse_issue_url
from bot.models import Reference, RefKind
from bot.views import inline_code

ACCEPTED_FORMS = (
    "Accepted forms: a Sentry short id (`SHOP-1A`), a Sentry issue URL, a Jira key "
    "(`SHOP-42`, when Jira is set up), a GitHub issue URL "
    "(`https://github.com/owner/name/issues/12`), or a description with `repo:owner/name`."
)

ISSUE_KEY = re.compile(r"^[A-Z][A-Z0-9_]*-[A-Z0-9]+$")
JIRA_KEY = re.compile(r"^([A-Z][A-Z0-9_]*)-\d+$")
GITHUB_ISSUE_PATH = re.compile(r"^/(?:api/v3/repos/)?([\w.-]+)/([\w.-]+)/issues/(\d+)/?$")
REPO_WORD = re.compile(r"(?:^|\s)repo:([\w.-]+/[\w.-]+)(?=\s|$)")


def parse_reference(text: str, settings: Settings) -> Reference:
    """Turn `/fix` text into a Reference, or raise BadReference saying what was wrong."""
    text = text.strip()
    if not text:
        raise BadReference(f"`/fix` needs something to fix. {ACCEPTED_FORMS}")
    if text.startswith(("http://", "https://")) and " " not in text:
        return _parse_url(text, settings)
    if " " not in text and ISSUE_KEY.match(text.upper()):
        return _parse_key(text.upper(), settings)
    repo_match = REPO_WORD.search(text)
    if repo_match is None:
        raise BadReference(
            f"{inline_code(text, 80)} is not a reference I know, and free text needs "
            f"`repo:owner/name` to say which repository. {ACCEPTED_FORMS}"
        )
    repo = repo_match.group(1)
    if settings.repo(repo) is None:
        raise BadReference(
            f"The repository {inline_code(repo, 80)} is not in fixbot.yml's `repos`. "
            f"Known: {_known_repos(settings)}."
        )
    description = REPO_WORD.sub(" ", text).strip()
    if not description:
        raise BadReference(f"Say what is wrong as well as `repo:{repo}`. {ACCEPTED_FORMS}")
    return Reference(RefKind.TEXT, description, repo=settings.repo(repo).name)  # type: ignore[union-attr]


def _parse_url(url: str, settings: Settings) -> Reference:
    sentry_issue = parse_issue_url(url, sentry_url=settings.sentry_url)
    if sentry_issue is not None:
        if not settings.sentry_enabled:
            raise BadReference(
                "That is a Sentry issue URL, but Sentry is not set up: "
                "set SENTRY_AUTH_TOKEN and SENTRY_ORG."
            )
        return Reference(RefKind.SENTRY, sentry_issue.issue, url=url)
    match = GITHUB_ISSUE_PATH.match(urlparse(url).path)
    if match is not None:
        owner, name, number = match.groups()
        repo = f"{owner}/{name}"
        if settings.repo(repo) is None:
            raise BadReference(
                f"`{repo}` is not in fixbot.yml's `repos`. Known: {_known_repos(settings)}."
            )
        return Reference(RefKind.GITHUB, f"{repo}#{number}", url=url, repo=repo)
    raise BadReference(
        f"{inline_code(url, 80)} is not a Sentry or GitHub issue URL. {ACCEPTED_FORMS}"
    )


def _parse_key(key: str, settings: Settings) -> Reference:
    jira = JIRA_KEY.match(key)
    if jira is not None and settings.jira_enabled:
        project = jira.group(1)
        for repo in settings.repos:
            if project in repo.jira_projects:
                return Reference(RefKind.JIRA, key, repo=repo.name)
    if settings.sentry_enabled:
        return Reference(RefKind.SENTRY, key)
    if jira is not None and settings.jira_enabled:
        raise BadReference(
            f"The Jira project `{jira.group(1)}` is not mapped to a repository: "
            "add it to `jira_projects` of a repo in fixbot.yml."
        )
    raise BadReference(
        f"`{key}` looks like a Sentry short id or a Jira key, but neither Sentry "
        "(SENTRY_AUTH_TOKEN, SENTRY_ORG) nor Jira (JIRA_URL, JIRA_EMAIL, JIRA_API_TOKEN) "
        f"is set up. {ACCEPTED_FORMS}"
    )


def _known_repos(settings: Settings) -> str:
    return ", ".join(f"`{repo.name}`" for repo in settings.repos) or "none yet"

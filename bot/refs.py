"""Parsing what people paste into a Reference: the one parser for `/fix`, mentions and CLI.

Forms, as people copy them from Sentry, GitHub and Jira (Slack's `<url|text>` and `<url>`
wrapping, `&amp;` escapes and a missing `https://` are all taken off first):

- Sentry: a short id (`SHOP-1A`, `PYTHON-DJANGO-1A2`, `1PASSWORD-3`), a numeric issue id
  (`4000000001`), or an issue URL on SENTRY_URL's host (`https://acme.sentry.io/issues/123/`,
  `…/organizations/acme/issues/123/events/…/?project=4`).
- GitHub: `owner/name#12`, an issue or pull-request URL on GITHUB_API_URL's web host
  (`https://github.com/owner/name/issues/12`, `…/pull/12/files`; Enterprise: the API's own
  host), or the REST URL of one (`https://api.github.com/repos/owner/name/issues/12`).
- Jira: a key of a project in some repo's `jira_projects` (`SHOP-42`), or an issue URL on
  JIRA_URL's host (`/browse/SHOP-42`, `?selectedIssue=SHOP-42`, `…/issues/SHOP-42`).
- Free text with `repo:owner/name`.

A URL may be followed by words (a note for people; ignored). A host that is none of the
configured ones is refused, so `https://evil.example/acme/shop/issues/1` names nothing.
"""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import parse_qs, urlsplit

from bot.config import Settings
from bot.errors import BadReference
from bot.integrations.sentry import SHORT_ID, is_sentry_host, parse_issue_url, site
from bot.models import Reference, RefKind
from bot.views import inline_code

ACCEPTED_FORMS = (
    "Accepted forms: a Sentry short id (`SHOP-1A`) or issue URL, a Jira key "
    "(`SHOP-42`, when Jira is set up) or issue URL, a GitHub issue or pull request "
    "(`owner/name#12` or its URL), or a description with `repo:owner/name`."
)

JIRA_KEY = re.compile(r"^([A-Z][A-Z0-9_]*)-(\d+)$")
REPO_WORD = re.compile(r"(?:^|\s)repo:([\w.-]+/[\w.-]+)(?=\s|$)")
_SLACK_LINK = re.compile(r"<((?:https?://|www\.)[^|>\s]+)(?:\|[^>]*)?>")
_SHORTHAND = re.compile(r"^([\w.-]+)/([\w.-]+)#(\d+)$")
_WEB_ISSUE = re.compile(r"^/([\w.-]+)/([\w.-]+)/(?:issues|pull)/(\d+)(?:/.*)?$")
_API_ISSUE = re.compile(r"^/repos/([\w.-]+)/([\w.-]+)/(?:issues|pulls)/(\d+)/?$")
_JIRA_PATH_KEY = re.compile(r"/(?:browse|issues)/([A-Za-z][A-Za-z0-9_]*-\d+)/?$")


def unwrap_slack(text: str) -> str:
    """Text as typed: Slack's `<url|label>` and `<url>` become the URL, `&amp;` becomes `&`."""
    return unescape(_SLACK_LINK.sub(lambda match: match.group(1), text))


def parse_reference(text: str, settings: Settings) -> Reference:
    """Turn what someone pasted into a Reference, or raise BadReference saying what was wrong."""
    text = unwrap_slack(text).strip()
    if not text:
        raise BadReference(f"`/fix` needs something to fix. {ACCEPTED_FORMS}")
    first = text.split()[0]
    repo_match = REPO_WORD.search(text)
    if _looks_like_url(first) or _SHORTHAND.match(first):
        return _parse_link(first, settings)
    if repo_match is None:
        if SHORT_ID.match(first) or first.isdigit():
            return _parse_key(first.upper(), settings)
        raise BadReference(
            f"{inline_code(text, 80)} is not a reference I know, and free text needs "
            f"`repo:owner/name` to say which repository. {ACCEPTED_FORMS}"
        )
    repo = _known_repo(repo_match.group(1), settings)
    description = REPO_WORD.sub(" ", text).strip()
    if not description:
        raise BadReference(f"Say what is wrong as well as `repo:{repo}`. {ACCEPTED_FORMS}")
    return Reference(RefKind.TEXT, description, repo=repo)


def names_a_reference(text: str) -> bool:
    """Whether words after `@fixbot fix` name an issue (else the thread says what to fix,
    prose and `repo:` included).

    Keys count here only as typed in capitals, so that `fix e-mail sending` stays prose.
    """
    words = unwrap_slack(text).split()
    if not words:
        return False
    first = words[0]
    return (
        _looks_like_url(first)
        or _SHORTHAND.match(first) is not None
        or (SHORT_ID.match(first) is not None and first == first.upper())
    )


def github_web_host(api_url: str) -> str:
    """Where GitHub's pages live for an API URL: github.com for api.github.com, else its host."""
    return site(api_url).removeprefix("api.")


def _looks_like_url(word: str) -> bool:
    if word.startswith(("http://", "https://")):
        return True
    host = word.split("/", 1)[0]
    return "/" in word and "." in host and "#" not in host


def _parse_link(word: str, settings: Settings) -> Reference:
    shorthand = _SHORTHAND.match(word)
    if shorthand is not None:
        owner, name, number = shorthand.groups()
        return _github(owner, name, number, url=None, settings=settings)
    url = word if word.startswith(("http://", "https://")) else f"https://{word}"
    host = site(url)
    if is_sentry_host(host, settings.sentry_url):
        return _parse_sentry_url(url, settings)
    if host in (site(settings.github_api_url), github_web_host(settings.github_api_url)):
        return _parse_github_url(url, settings)
    jira_host = site(settings.jira_url) if settings.jira_url else ""
    if jira_host and host == jira_host:
        return _parse_jira_url(url, settings)
    hosts = ", ".join(
        f"{name} ({inline_code(where, 60)})"
        for name, where in (
            ("Sentry", site(settings.sentry_url)),
            ("GitHub", github_web_host(settings.github_api_url)),
            ("Jira", jira_host),
        )
        if where
    )
    raise BadReference(
        f"{inline_code(url, 80)} is not on a Sentry, GitHub or Jira Fixbot knows: "
        f"it reads {hosts}. {ACCEPTED_FORMS}"
    )


def _parse_sentry_url(url: str, settings: Settings) -> Reference:
    issue = parse_issue_url(url, sentry_url=settings.sentry_url)
    if issue is None:
        raise BadReference(
            f"{inline_code(url, 80)} is a Sentry page but not an issue: open the issue "
            f"and copy its URL, or give its short id. {ACCEPTED_FORMS}"
        )
    if not settings.sentry_enabled:
        raise BadReference(
            "That is a Sentry issue URL, but Sentry is not set up: "
            "set SENTRY_AUTH_TOKEN and SENTRY_ORG."
        )
    org = settings.sentry_org or ""
    if issue.org is not None and issue.org.lower() != org.lower():
        raise BadReference(
            f"That issue is in the Sentry organization `{issue.org}`, and Fixbot reads "
            f"`{org}` (SENTRY_ORG)."
        )
    return Reference(RefKind.SENTRY, issue.issue.upper(), url=url)


def _parse_github_url(url: str, settings: Settings) -> Reference:
    parts = urlsplit(url)
    api_path = urlsplit(settings.github_api_url).path.rstrip("/")
    path = parts.path
    match = _WEB_ISSUE.match(path)
    if match is None and path.startswith(f"{api_path}/repos/"):
        match = _API_ISSUE.match(path.removeprefix(api_path))
    if match is None:
        raise BadReference(
            f"{inline_code(url, 80)} is a GitHub page but not an issue or a pull request. "
            f"{ACCEPTED_FORMS}"
        )
    owner, name, number = match.groups()
    return _github(owner, name, number, url=url, settings=settings)


def _github(
    owner: str, name: str, number: str, *, url: str | None, settings: Settings
) -> Reference:
    repo = _known_repo(f"{owner}/{name}", settings)
    return Reference(RefKind.GITHUB, f"{repo}#{number}", url=url, repo=repo)


def _parse_jira_url(url: str, settings: Settings) -> Reference:
    parts = urlsplit(url)
    selected = parse_qs(parts.query).get("selectedIssue", [])
    path_key = _JIRA_PATH_KEY.search(parts.path)
    key = (selected[0] if selected else path_key.group(1) if path_key else "").upper()
    if not JIRA_KEY.match(key):
        raise BadReference(
            f"{inline_code(url, 80)} is a Jira page but names no issue. {ACCEPTED_FORMS}"
        )
    reference = jira_reference(key, settings)
    return Reference(reference.kind, reference.key, url=url, repo=reference.repo)


def _parse_key(key: str, settings: Settings) -> Reference:
    jira = JIRA_KEY.match(key)
    if jira is not None and settings.jira_enabled:
        repo = _jira_repo(jira.group(1), settings)
        if repo is not None:
            return Reference(RefKind.JIRA, key, repo=repo)
    if settings.sentry_enabled:
        # A Sentry short id, or a Jira key of an unmapped project: looking it up tells which.
        return Reference(RefKind.SENTRY, key)
    if jira is not None and settings.jira_enabled:
        return jira_reference(key, settings)
    raise BadReference(
        f"`{key}` looks like a Sentry issue or a Jira key, but neither Sentry "
        "(SENTRY_AUTH_TOKEN, SENTRY_ORG) nor Jira (JIRA_URL, JIRA_EMAIL, JIRA_API_TOKEN) "
        f"is set up. {ACCEPTED_FORMS}"
    )


def jira_reference(key: str, settings: Settings) -> Reference:
    """A Jira key whose project must be mapped to a repository (also for Jira's webhook)."""
    if not settings.jira_enabled:
        raise BadReference(
            "That is a Jira issue, but Jira is not set up: "
            "set JIRA_URL, JIRA_EMAIL and JIRA_API_TOKEN."
        )
    project = key.rpartition("-")[0]
    repo = _jira_repo(project, settings)
    if repo is None:
        raise UnmappedJiraProject(project)
    return Reference(RefKind.JIRA, key, repo=repo)


class UnmappedJiraProject(BadReference):
    """A Jira project no repository in fixbot.yml claims."""

    def __init__(self, project: str) -> None:
        super().__init__(
            f"The Jira project `{project}` is not mapped to a repository: add it to "
            "`jira_projects` of a repo in fixbot.yml."
        )


def _jira_repo(project: str, settings: Settings) -> str | None:
    wanted = project.upper()
    return next(
        (r.name for r in settings.repos if wanted in (p.upper() for p in r.jira_projects)), None
    )


def _known_repo(name: str, settings: Settings) -> str:
    repo = settings.repo(name)
    if repo is None:
        known = ", ".join(f"`{r.name}`" for r in settings.repos) or "none yet"
        raise BadReference(
            f"The repository {inline_code(name, 80)} is not in fixbot.yml's `repos`. "
            f"Known: {known}."
        )
    return repo.name

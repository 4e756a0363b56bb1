"""Sentry: find an issue, read its latest event, and render both as context for a prompt."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Self
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel

from bot.integrations import DEFAULT_TIMEOUT_S, IntegrationError, ServiceClient

# A project slug (dashes allowed, a digit first too: PYTHON-DJANGO-1A2, 1PASSWORD-3), a
# dash, and the issue's base-32 counter.
SHORT_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]*-[A-Za-z0-9]+"
SHORT_ID = re.compile(f"^{SHORT_ID_PATTERN}$")
_SAAS_REGION_HOSTS = {"us", "de", "www"}
SAAS_URL = "https://sentry.io"


class SentryIssueUrl(BaseModel):
    """What a Sentry issue URL names. `issue` is a numeric id or a short id (`SHOP-1A`)."""

    base_url: str
    org: str | None
    issue: str
    project: str | None = None


def parse_issue_url(url: str, *, sentry_url: str | None = None) -> SentryIssueUrl | None:
    """Read a Sentry issue URL on the configured Sentry, or return None when `url` is not one.

    Understood: `https://acme.sentry.io/issues/123/`, `https://sentry.io/organizations/acme/
    issues/123/` (anything after the issue, such as `events/…/` or `?project=`, is ignored),
    the older self-hosted `https://sentry.example.com/acme/shop/issues/123/`, and the API's
    `https://sentry.io/api/0/issues/123/` (a webhook's `issue_url`). The host
    must be `sentry_url`'s (default sentry.io) or one of its subdomains; sentry.io stands for
    all of Sentry's SaaS hosts (`acme.sentry.io`, `us.sentry.io`).
    """
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not is_sentry_host(site(url), sentry_url):
        return None
    base_url = f"{parts.scheme}://{parts.netloc}"
    subdomain = host.removesuffix(".sentry.io") if host.endswith(".sentry.io") else None
    org_subdomain = subdomain if subdomain and subdomain not in _SAAS_REGION_HOSTS else None
    segments = [segment for segment in parts.path.split("/") if segment]
    if segments[:2] == ["api", "0"]:  # the API's URL of an issue, as webhooks give it
        segments = segments[2:]

    found: SentryIssueUrl | None = None
    match segments:
        case ["organizations", org, "issues", issue, *_]:
            found = SentryIssueUrl(base_url=base_url, org=org, issue=issue)
        case ["issues", issue, *_] if org_subdomain or subdomain is None:
            found = SentryIssueUrl(base_url=base_url, org=org_subdomain, issue=issue)
        case [org, project, "issues", issue, *_] if org not in ("api", "organizations"):
            found = SentryIssueUrl(base_url=base_url, org=org, issue=issue, project=project)
    if found is None or not (found.issue.isdigit() or SHORT_ID.match(found.issue)):
        return None
    return found


def is_sentry_host(host: str, sentry_url: str | None) -> bool:
    """Whether `host` (see `site`) is the configured Sentry's (sentry.io: any SaaS host)."""
    configured = site(sentry_url or SAAS_URL)
    if configured == "sentry.io" or configured.endswith(".sentry.io"):
        configured = "sentry.io"
    return bool(host) and (host == configured or host.endswith(f".{configured}"))


def site(url: str) -> str:
    """A URL's host as a person means it: lower case, with its port unless the default."""
    parts = urlsplit(url if "//" in url else f"https://{url}")
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        return host
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return f"{host}:{port}" if port is not None and port != default else host


class ShortIdResolution(BaseModel):
    """What a short id (`SHOP-1A`) stands for."""

    short_id: str
    group_id: str
    project_slug: str
    organization_slug: str

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            short_id=data["shortId"],
            group_id=str(data["groupId"]),
            project_slug=data["projectSlug"],
            organization_slug=data["organizationSlug"],
        )


class SentryIssue(BaseModel):
    """A Sentry issue (a group of like events)."""

    id: str
    short_id: str
    title: str
    culprit: str = ""
    level: str = "error"
    status: str = ""
    count: int = 0
    user_count: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    permalink: str = ""
    project_slug: str = ""
    first_release: str | None = None
    last_release: str | None = None
    tags: dict[str, list[str]] = {}
    """Tag key to its most common values."""

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            id=str(data["id"]),
            short_id=data.get("shortId") or "",
            title=data.get("title") or "",
            culprit=data.get("culprit") or "",
            level=data.get("level") or "error",
            status=data.get("status") or "",
            count=int(data.get("count") or 0),
            user_count=int(data.get("userCount") or 0),
            first_seen=data.get("firstSeen"),
            last_seen=data.get("lastSeen"),
            permalink=data.get("permalink") or "",
            project_slug=(data.get("project") or {}).get("slug") or "",
            first_release=_release_version(data.get("firstRelease")),
            last_release=_release_version(data.get("lastRelease")),
            tags={
                tag["key"]: [str(value.get("value")) for value in tag.get("topValues") or []]
                for tag in data.get("tags") or []
            },
        )


class StackFrame(BaseModel):
    """One frame of a stack trace, with the source lines around it when Sentry has them."""

    filename: str | None = None
    abs_path: str | None = None
    lineno: int | None = None
    function: str | None = None
    module: str | None = None
    in_app: bool = False
    context_line: str | None = None
    pre_context: list[str] = []
    post_context: list[str] = []

    @property
    def location(self) -> str:
        """`file:line`, the way an editor or a stack trace names a place in code."""
        path = self.filename or self.abs_path or self.module or "?"
        return f"{path}:{self.lineno}" if self.lineno is not None else path

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        """Read a frame in the API's form (`lineNo`, `context` pairs) or the SDK's (`lineno`)."""
        lineno = _first(data, "lineNo", "lineno")
        context_line = data.get("context_line")
        pre_context = data.get("pre_context") or []
        post_context = data.get("post_context") or []
        if data.get("context") and lineno is not None:
            numbered = [(int(number), str(line)) for number, line in data["context"]]
            pre_context = [line for number, line in numbered if number < lineno]
            post_context = [line for number, line in numbered if number > lineno]
            context_line = next((line for number, line in numbered if number == lineno), None)
        return cls(
            filename=data.get("filename"),
            abs_path=_first(data, "absPath", "abs_path"),
            lineno=lineno,
            function=data.get("function"),
            module=data.get("module"),
            in_app=bool(_first(data, "inApp", "in_app")),
            context_line=context_line,
            pre_context=pre_context,
            post_context=post_context,
        )


class ExceptionInfo(BaseModel):
    """One exception of an event, its frames oldest call first (Sentry's order)."""

    type: str
    value: str = ""
    module: str | None = None
    frames: list[StackFrame] = []

    thread_id: str | None = None
    """The thread it was raised in; its stack trace is there when the exception has none."""

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        thread_id = _first(data, "threadId", "thread_id")
        return cls(
            type=data.get("type") or "Error",
            value=data.get("value") or "",
            module=data.get("module"),
            frames=_frames(data.get("stacktrace")),
            thread_id=str(thread_id) if thread_id is not None else None,
        )

    @property
    def summary(self) -> str:
        return f"{self.type}: {self.value}" if self.value else self.type


class Breadcrumb(BaseModel):
    """Something that happened shortly before the error (a request, a log line, a query)."""

    timestamp: datetime | None = None
    type: str = "default"
    category: str | None = None
    level: str | None = None
    message: str | None = None
    data: dict[str, Any] = {}

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            timestamp=data.get("timestamp"),
            type=data.get("type") or "default",
            category=data.get("category"),
            level=data.get("level"),
            message=data.get("message"),
            data=data.get("data") or {},
        )

    def render(self) -> str:
        when = self.timestamp.strftime("%H:%M:%S") if self.timestamp else "--:--:--"
        what = self.message or ", ".join(f"{k}={v}" for k, v in self.data.items()) or self.type
        level = f" {self.level}" if self.level and self.level != "info" else ""
        return f"{when} [{self.category or self.type}]{level} {what}"


class SentryEvent(BaseModel):
    """One occurrence of an issue: its exceptions, breadcrumbs and tags."""

    event_id: str
    timestamp: datetime | None = None
    platform: str | None = None
    release: str | None = None
    message: str | None = None
    exceptions: list[ExceptionInfo] = []
    """Oldest cause first; the last one is the exception that was raised."""
    breadcrumbs: list[Breadcrumb] = []
    tags: dict[str, str] = {}

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        """Read an event from the API (`entries`) or in the SDK's raw form (`exception`)."""
        entries = {entry.get("type"): entry.get("data") or {} for entry in data.get("entries", [])}
        exception = entries.get("exception") or data.get("exception")
        breadcrumbs = entries.get("breadcrumbs") or data.get("breadcrumbs")
        message = (entries.get("message") or {}).get("formatted") or data.get("message")
        exceptions = [ExceptionInfo.from_api(value) for value in _values(exception)]
        threads = _values(entries.get("threads") or data.get("threads"))
        return cls(
            event_id=str(_first(data, "eventID", "event_id", "id")),
            timestamp=_first(data, "dateCreated", "timestamp"),
            platform=data.get("platform"),
            release=_release_version(data.get("release")),
            message=message if isinstance(message, str) else None,
            exceptions=_with_thread_frames(exceptions, threads),
            breadcrumbs=[Breadcrumb.from_api(crumb) for crumb in _values(breadcrumbs)],
            tags=_tags(data.get("tags")),
        )


class ErrorContext(BaseModel):
    """An issue and its latest event: what a planning prompt needs to know about an error."""

    issue: SentryIssue
    event: SentryEvent | None = None

    def render(self, *, max_breadcrumbs: int = 10, max_other_frames: int = 8) -> str:
        """Compact markdown: summary, exception, in-app frames first, the last breadcrumbs."""
        issue, event = self.issue, self.event
        exceptions = event.exceptions if event else []
        headline = exceptions[-1].summary if exceptions else issue.title
        lines = [f"## Sentry issue {issue.short_id or issue.id}: {headline}", ""]
        lines += _issue_facts(issue, event)
        if exceptions:
            lines += ["", "### Exception", ""]
            lines += [f"- {exc.summary}" for exc in reversed(exceptions)]
            if len(exceptions) > 1:
                lines.append("  (listed from the one raised to its first cause)")
            lines += _render_frames(exceptions, max_other_frames)
        elif event and event.message:
            lines += ["", "### Message", "", _fenced(event.message)]
        crumbs = event.breadcrumbs[-max_breadcrumbs:] if event and max_breadcrumbs > 0 else []
        if crumbs:
            total = len(event.breadcrumbs) if event else 0
            lines += ["", f"### Breadcrumbs (last {len(crumbs)} of {total}, oldest first)", ""]
            lines += [f"- {crumb.render()}" for crumb in crumbs]
        return "\n".join(lines).rstrip() + "\n"


class SentryRelease(BaseModel):
    """A release of one or more projects, and when it was released (or made)."""

    version: str
    projects: list[str] = []
    commit_count: int = 0
    released_at: datetime | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            version=data["version"],
            projects=[str(project.get("slug")) for project in data.get("projects") or []],
            commit_count=int(data.get("commitCount") or 0),
            released_at=data.get("dateReleased") or data.get("dateCreated"),
        )


class SentryDeploy(BaseModel):
    """A release deployed to an environment."""

    environment: str = ""
    finished_at: datetime | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        return cls(environment=data.get("environment") or "", finished_at=data.get("dateFinished"))


class SentryClient(ServiceClient):
    """Sentry's web API for one organization (sentry.io or self-hosted)."""

    service = "Sentry"
    token_setting = "SENTRY_AUTH_TOKEN"

    def __init__(
        self,
        base_url: str,
        token: str,
        org: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )
        self.org = org

    def _org_path(self, *segments: str) -> str:
        quoted = "/".join(quote(segment, safe="") for segment in (self.org, *segments))
        return f"/api/0/organizations/{quoted}/"

    async def check(self) -> str:
        """Confirm the token can read the organization; returns its name."""
        data = await self.request("GET", self._org_path(), what=f"organization {self.org}")
        return str(data.get("name") or self.org) if isinstance(data, dict) else self.org

    async def resolve_short_id(self, short_id: str) -> ShortIdResolution:
        """The issue id and project behind a short id such as `SHOP-1A`."""
        what = f"short id {short_id}"
        data = await self.request("GET", self._org_path("shortids", short_id), what=what)
        return self.parse(ShortIdResolution.from_api, data, what=what)

    async def get_issue(self, issue_id: str) -> SentryIssue:
        """An issue by its numeric id."""
        what = f"issue {issue_id}"
        data = await self.request("GET", self._org_path("issues", issue_id), what=what)
        return self.parse(SentryIssue.from_api, data, what=what)

    async def latest_event(self, issue_id: str) -> SentryEvent:
        """The most recent event of an issue, with its stack trace and breadcrumbs."""
        what = f"the latest event of issue {issue_id}"
        path = self._org_path("issues", issue_id, "events", "latest")
        data = await self.request("GET", path, what=what)
        return self.parse(SentryEvent.from_api, data, what=what)

    async def group_id(self, issue: str) -> str:
        """The numeric id of an issue named by its numeric id or its short id."""
        return issue if issue.isdigit() else (await self.resolve_short_id(issue)).group_id

    async def error_context(self, issue: str) -> ErrorContext:
        """Issue and latest event for a numeric id or a short id."""
        issue_id = await self.group_id(issue)
        return ErrorContext(
            issue=await self.get_issue(issue_id), event=await self.latest_event(issue_id)
        )

    async def resolve_issue(
        self, issue_id: str, *, commit: str | None, repository: str | None
    ) -> str:
        """Mark an issue resolved (`PUT …/issues/{id}/`); returns how, in words.

        In the merge commit when Sentry knows the repository (it then resolves the issue in
        the release that carries the commit); else in the next release; else now. Sentry
        answers 400 to a resolution it cannot make, and the next one is tried.
        """
        ways: list[tuple[dict[str, Any], str]] = []
        if commit and repository:
            in_commit = {"inCommit": {"commit": commit, "repository": repository}}
            ways.append((in_commit, f"in commit {commit[:12]}"))
        ways += [({"inNextRelease": True}, "in the next release"), ({}, "now")]
        what = f"resolving issue {issue_id}"
        for number, (details, how) in enumerate(ways, start=1):
            body = {"status": "resolved", **({"statusDetails": details} if details else {})}
            try:
                await self.request("PUT", self._org_path("issues", issue_id), json=body, what=what)
            except IntegrationError as error:
                if error.status != 400 or number == len(ways):
                    raise
                continue
            return how
        raise AssertionError("unreachable: the last way raises or returns")

    async def issue_events(
        self, issue_id: str, *, start: datetime, end: datetime | None = None
    ) -> list[SentryEvent]:
        """An issue's events between `start` and `end` (now), newest first; one page (100)."""
        params = {"start": _api_time(start), "full": "false"}
        if end is not None:
            params["end"] = _api_time(end)
        what = f"the events of issue {issue_id}"
        path = self._org_path("issues", issue_id, "events")
        data = await self.request("GET", path, params=params, what=what)
        return self.parse(lambda d: [SentryEvent.from_api(e) for e in d], data, what=what)

    async def project_releases(self, project: str) -> list[SentryRelease]:
        """The organization's newest releases (one page) that include `project`."""
        what = f"the releases of {project}"
        data = await self.request("GET", self._org_path("releases"), what=what)
        releases = self.parse(lambda d: [SentryRelease.from_api(r) for r in d], data, what=what)
        return [release for release in releases if project in release.projects]

    async def release_commits(self, version: str) -> list[str]:
        """The commit ids Sentry associated with a release."""
        what = f"the commits of release {version}"
        data = await self.request("GET", self._org_path("releases", version, "commits"), what=what)
        return self.parse(lambda d: [str(commit["id"]) for commit in d], data, what=what)

    async def first_deploy(self, version: str) -> datetime | None:
        """When the release's first deploy finished, or None when it has none."""
        what = f"the deploys of release {version}"
        data = await self.request("GET", self._org_path("releases", version, "deploys"), what=what)
        deploys = self.parse(lambda d: [SentryDeploy.from_api(x) for x in d], data, what=what)
        return min((d.finished_at for d in deploys if d.finished_at), default=None)


def _api_time(moment: datetime) -> str:
    """ISO-8601 in UTC, the form Sentry's `start` and `end` take."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _first(data: Mapping[str, Any], *keys: str) -> Any:
    return next((data[key] for key in keys if data.get(key) is not None), None)


def _values(interface: Any) -> list[Any]:
    """An interface's items: `{"values": […]}`, or the flat list SDKs may send instead."""
    if isinstance(interface, Mapping):
        interface = interface.get("values")
    return [item for item in interface or [] if isinstance(item, Mapping)]


def _frames(stacktrace: Any) -> list[StackFrame]:
    frames = stacktrace.get("frames") if isinstance(stacktrace, Mapping) else None
    return [StackFrame.from_api(frame) for frame in frames or []]


def _with_thread_frames(
    exceptions: list[ExceptionInfo], threads: list[Mapping[str, Any]]
) -> list[ExceptionInfo]:
    """Native and mobile events keep the stack trace in the crashed thread, not the exception.

    An exception without frames takes its thread's (by `thread_id`, else the crashed thread
    when there is one exception); an event with no exception shows the crashed thread.
    """
    by_id = {str(thread.get("id")): thread for thread in threads}
    crashed = next((thread for thread in threads if thread.get("crashed")), None)
    if not exceptions:
        if crashed is None or not _frames(crashed.get("stacktrace")):
            return []
        name = str(crashed.get("name") or crashed.get("id"))
        return [
            ExceptionInfo(
                type="Crashed thread", value=name, frames=_frames(crashed.get("stacktrace"))
            )
        ]
    result = []
    for exception in exceptions:
        thread = by_id.get(exception.thread_id or "") or (crashed if len(exceptions) == 1 else None)
        if not exception.frames and thread is not None:
            exception = exception.model_copy(update={"frames": _frames(thread.get("stacktrace"))})
        result.append(exception)
    return result


def _release_version(release: Any) -> str | None:
    if isinstance(release, Mapping):
        return release.get("shortVersion") or release.get("version")
    return str(release) if release else None


def _tags(raw: Any) -> dict[str, str]:
    """Event tags come as `[{key, value}]` from the API and as pairs or a dict from SDKs."""
    if isinstance(raw, Mapping):
        return {str(key): str(value) for key, value in raw.items()}
    tags: dict[str, str] = {}
    for tag in raw or []:
        if isinstance(tag, Mapping):
            tags[str(tag.get("key"))] = str(tag.get("value"))
        else:
            key, value = tag
            tags[str(key)] = str(value)
    return tags


def _issue_facts(issue: SentryIssue, event: SentryEvent | None) -> list[str]:
    facts = [
        f"- Project: {issue.project_slug or '?'} · level {issue.level}"
        f" · {issue.count} events · {issue.user_count} users"
    ]
    if issue.culprit:
        facts.append(f"- Culprit: {issue.culprit}")
    if issue.first_seen or issue.last_seen:
        facts.append(f"- First seen {_when(issue.first_seen)}, last seen {_when(issue.last_seen)}")
    release = event.release if event else None
    if issue.first_release or issue.last_release or release:
        facts.append(
            f"- Releases: first {issue.first_release or '?'}, last {issue.last_release or '?'}"
            + (f", this event {release}" if release else "")
        )
    tags = event.tags if event and event.tags else {k: v[0] for k, v in issue.tags.items() if v}
    if tags:
        facts.append("- Tags: " + ", ".join(f"{key}={value}" for key, value in tags.items()))
    if issue.permalink:
        facts.append(f"- Link: {issue.permalink}")
    return facts


def _render_frames(exceptions: list[ExceptionInfo], max_other_frames: int) -> list[str]:
    """In-app frames of every exception, innermost first, then a few library frames."""
    raised_first = list(reversed(exceptions))
    in_app = [frame for exc in raised_first for frame in reversed(exc.frames) if frame.in_app]
    others = [frame for frame in reversed(raised_first[0].frames) if not frame.in_app]
    lines: list[str] = []
    if in_app:
        lines += ["", "### In-app frames (innermost first)", ""]
        for number, frame in enumerate(in_app, start=1):
            lines.append(f"{number}. `{frame.location}` in `{frame.function or '?'}`")
            source = _source_excerpt(frame)
            if source:
                lines.append(_indent(_fenced(source), "   "))
    if others and max_other_frames > 0:
        shown = others[:max_other_frames]
        lines += ["", f"### Other frames (innermost first, {len(shown)} of {len(others)})", ""]
        lines += [f"- `{frame.location}` in `{frame.function or '?'}`" for frame in shown]
    return lines


def _source_excerpt(frame: StackFrame) -> str:
    if frame.context_line is None:
        return ""
    if frame.lineno is None:
        return f"> {frame.context_line}"
    first = frame.lineno - len(frame.pre_context)
    numbered = [*frame.pre_context, frame.context_line, *frame.post_context]
    width = len(str(first + len(numbered)))
    lines = []
    for number, line in enumerate(numbered, start=first):
        marker = ">" if number == frame.lineno else " "
        lines.append(f"{marker} {number:>{width}} | {line}".rstrip())
    return "\n".join(lines)


def _fenced(text: str) -> str:
    """A code fence longer than any backtick run inside, so the text cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment else "?"

"""A local Sentry: the handful of web API endpoints Fixbot reads, over real HTTP.

    async with FakeSentry(token="sntrys-test", org="acme") as sentry:
        issue_id = sentry.add_issue(short_id="SHOP-1", frames=[...])
        client = SentryClient(sentry.url, "sntrys-test", "acme")

Payloads follow Sentry's API: the short-id lookup, issue details, and the latest
event with `entries` of type `exception` and `breadcrumbs`. Every request must
carry `Authorization: Bearer <token>` (401 otherwise); unknown things are 404.
Everything received is kept in `requests`. `sentry.faults` injects errors and holds
requests (fakes/faults.py).

After a merge (what Fixbot calls then):

- `PUT …/issues/{id}/` with `status` and `statusDetails`: `inCommit` needs a repository
  added with `add_repository` and `inNextRelease` a release of the issue's project,
  else 400 with Sentry's `detail`; the update is kept in `resolutions` (issue id, body).
- `GET …/issues/{id}/events/?start=&end=`: the issue's events (`add_event`) in that span,
  newest first.
- `GET …/releases/` (newest first), `…/releases/{version}/commits/` and
  `…/releases/{version}/deploys/`, from `add_release`.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from .faults import Faults


@dataclass
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeIssue:
    """An issue held by the fake, with the payloads it serves for it."""

    id: str
    short_id: str
    project: str
    group: dict[str, Any]
    latest_event: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeSentry:
    """Sentry's web API for one organization, backed by issues added with `add_issue`."""

    def __init__(self, *, token: str = "sentry-token", org: str = "acme") -> None:
        self.token = token
        self.org = org
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.issues: dict[str, FakeIssue] = {}
        self.repositories: set[str] = set()
        self.releases: list[dict[str, Any]] = []  # oldest first
        self.resolutions: list[tuple[str, Any]] = []
        self._ids = itertools.count(4_000_000_001)
        self._runner: web.AppRunner | None = None
        self.faults = Faults()

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> str:
        """Listen on a free port of 127.0.0.1; returns (and sets) `url`."""
        app = web.Application(middlewares=[self._record_and_authenticate])
        org_base = "/api/0/organizations/{org}"
        app.router.add_get(f"{org_base}/", self._organization)
        app.router.add_get(f"{org_base}/shortids/{{short_id}}/", self._short_id)
        for base in (f"{org_base}/issues/{{issue_id}}", "/api/0/issues/{issue_id}"):
            app.router.add_get(f"{base}/", self._issue)
            app.router.add_put(f"{base}/", self._update_issue)
            app.router.add_get(f"{base}/events/latest/", self._latest_event)
            app.router.add_get(f"{base}/events/", self._events)
        app.router.add_get(f"{org_base}/releases/", self._releases)
        app.router.add_get(f"{org_base}/releases/{{version}}/commits/", self._release_commits)
        app.router.add_get(f"{org_base}/releases/{{version}}/deploys/", self._release_deploys)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def close(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- the world -------------------------------------------------------------------------

    def add_issue(
        self,
        *,
        short_id: str = "SHOP-1",
        project: str = "shop-backend",
        title: str | None = None,
        culprit: str = "",
        level: str = "error",
        exception: tuple[str, str] = ("ZeroDivisionError", "division by zero"),
        frames: Sequence[Mapping[str, Any]] = (),
        breadcrumbs: Sequence[Mapping[str, Any]] = (),
        tags: Mapping[str, str] | None = None,
        release: str = "shop@1.0.0",
        count: int = 1,
        user_count: int = 1,
        first_seen: datetime | None = None,
        last_seen: datetime | None = None,
    ) -> str:
        """Add an issue with one event; returns its numeric id (as a string, like Sentry).

        `frames` are in the SDK's form, oldest call first: `filename`, `abs_path`, `lineno`,
        `function`, `module`, `in_app`, `context_line`, `pre_context`, `post_context`.
        `breadcrumbs` likewise: `timestamp` (ISO text or epoch), `category`, `message`, ….
        """
        issue_id = str(next(self._ids))
        exc_type, exc_value = exception
        last_seen = last_seen or datetime.now(UTC)
        first_seen = first_seen or last_seen
        title = title or f"{exc_type}: {exc_value}"
        culprit = culprit or _culprit(frames)
        tags = {"environment": "production", "level": level, "release": release, **(tags or {})}
        release_info = {"version": release, "shortVersion": release.split("@")[-1]}
        group = {
            "id": issue_id,
            "shortId": short_id.upper(),
            "title": title,
            "culprit": culprit,
            "level": level,
            "status": "unresolved",
            "substatus": "ongoing",
            "type": "error",
            "metadata": {"type": exc_type, "value": exc_value},
            "count": str(count),
            "userCount": user_count,
            "firstSeen": _iso(first_seen),
            "lastSeen": _iso(last_seen),
            "project": {"id": "1", "name": project, "slug": project, "platform": "python"},
            "firstRelease": release_info,
            "lastRelease": release_info,
            "tags": [
                {
                    "key": key,
                    "name": key.title(),
                    "totalValues": count,
                    "topValues": [{"key": key, "value": value, "count": count}],
                }
                for key, value in tags.items()
            ],
            "isPublic": False,
            "hasSeen": False,
            "numComments": 0,
        }
        event = {
            "id": uuid.uuid4().hex,
            "eventID": "",
            "groupID": issue_id,
            "title": title,
            "culprit": culprit,
            "platform": "python",
            "dateCreated": _iso(last_seen),
            "dateReceived": _iso(last_seen),
            "release": release_info,
            "tags": [{"key": key, "value": value} for key, value in tags.items()],
            "metadata": {"type": exc_type, "value": exc_value},
            "entries": [
                {
                    "type": "exception",
                    "data": {
                        "values": [
                            {
                                "type": exc_type,
                                "value": exc_value,
                                "module": None,
                                "mechanism": {"type": "generic", "handled": False},
                                "stacktrace": {
                                    "frames": [_api_frame(frame) for frame in frames],
                                    "framesOmitted": None,
                                    "hasSystemFrames": any(not f.get("in_app") for f in frames),
                                },
                                "rawStacktrace": None,
                            }
                        ],
                        "hasSystemFrames": any(not f.get("in_app") for f in frames),
                        "excOmitted": None,
                    },
                },
                {
                    "type": "breadcrumbs",
                    "data": {"values": [_api_breadcrumb(crumb) for crumb in breadcrumbs]},
                },
            ],
        }
        event["eventID"] = event["id"]
        self.issues[issue_id] = FakeIssue(
            issue_id, short_id.upper(), project, group, event, events=[event]
        )
        return issue_id

    def add_event(
        self, issue_id: str, *, at: datetime | None = None, release: str | None = None
    ) -> None:
        """One more occurrence of an issue (a copy of its first event) at `at` (now)."""
        issue = self.issues[issue_id]
        at = at or datetime.now(UTC)
        event = {**issue.events[0], "id": uuid.uuid4().hex, "dateCreated": _iso(at)}
        event["eventID"] = event["id"]
        if release is not None:
            event["release"] = {"version": release, "shortVersion": release.split("@")[-1]}
        issue.events.append(event)
        issue.latest_event = event
        issue.group["lastSeen"] = _iso(at)
        issue.group["count"] = str(len(issue.events))

    def add_repository(self, name: str) -> None:
        """A repository Sentry's source-code integration knows (for `inCommit`)."""
        self.repositories.add(name)

    def add_release(
        self,
        version: str,
        *,
        project: str = "shop-backend",
        commits: Sequence[str] = (),
        deployed_at: datetime | None = None,
    ) -> None:
        """A release of `project` carrying `commits`, deployed at `deployed_at` if given."""
        now = _iso(datetime.now(UTC))
        self.releases.append(
            {
                "version": version,
                "shortVersion": version.split("@")[-1],
                "dateCreated": now,
                "dateReleased": None,
                "commitCount": len(commits),
                "deployCount": 1 if deployed_at else 0,
                "projects": [{"id": "1", "name": project, "slug": project}],
                "commits": [{"id": sha, "message": "", "dateCreated": now} for sha in commits],
                "deploys": [
                    {
                        "id": "1",
                        "environment": "production",
                        "dateStarted": None,
                        "dateFinished": _iso(deployed_at),
                        "name": None,
                        "url": None,
                    }
                ]
                if deployed_at
                else [],
            }
        )

    # ---- HTTP ------------------------------------------------------------------------------

    @web.middleware
    async def _record_and_authenticate(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        raw = await request.read()
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=dict(request.headers),
                body=_decode(raw),
            )
        )
        injected = await self.faults.apply(request)
        if injected is not None:
            return injected
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"detail": "Invalid token"}, status=401)
        if request.match_info.get("org", self.org) != self.org:
            return _not_found()
        return await handler(request)

    async def _organization(self, request: web.Request) -> web.Response:
        return web.json_response({"id": "1", "slug": self.org, "name": self.org.title()})

    async def _short_id(self, request: web.Request) -> web.Response:
        wanted = request.match_info["short_id"].upper()
        issue = next((i for i in self.issues.values() if i.short_id == wanted), None)
        if issue is None:
            return _not_found()
        return web.json_response(
            {
                "organizationSlug": self.org,
                "projectSlug": issue.project,
                "groupId": issue.id,
                "shortId": issue.short_id,
                "group": issue.group,
            }
        )

    async def _issue(self, request: web.Request) -> web.Response:
        issue = self.issues.get(request.match_info["issue_id"])
        if issue is None:
            return _not_found()
        permalink = f"{self.url}/organizations/{self.org}/issues/{issue.id}/"
        return web.json_response({**issue.group, "permalink": permalink})

    async def _update_issue(self, request: web.Request) -> web.Response:
        issue = self.issues.get(request.match_info["issue_id"])
        if issue is None:
            return _not_found()
        body = await request.json()
        details = body.get("statusDetails") or {}
        in_commit = details.get("inCommit")
        if in_commit and in_commit.get("repository") not in self.repositories:
            return web.json_response({"detail": "Unable to find the given repository."}, status=400)
        releases = [r for r in self.releases if r["projects"][0]["slug"] == issue.project]
        if details.get("inNextRelease") and not releases:
            detail = "No release data present in the system to form a basis for 'Next Release'"
            return web.json_response({"detail": detail}, status=400)
        self.resolutions.append((issue.id, body))
        issue.group["status"] = body.get("status", issue.group["status"])
        issue.group["statusDetails"] = details
        return web.json_response({"status": issue.group["status"], "statusDetails": details})

    async def _events(self, request: web.Request) -> web.Response:
        issue = self.issues.get(request.match_info["issue_id"])
        if issue is None:
            return _not_found()
        start = _parse_time(request.query.get("start"))
        end = _parse_time(request.query.get("end"))

        def within(event: Mapping[str, Any]) -> bool:
            when = _parse_time(event["dateCreated"])
            assert when is not None
            return (start is None or when >= start) and (end is None or when <= end)

        chosen = [event for event in issue.events if within(event)]
        return web.json_response([_event_summary(e) for e in reversed(chosen)][:100])

    async def _releases(self, request: web.Request) -> web.Response:
        listed = [
            {k: v for k, v in r.items() if k not in ("commits", "deploys")}
            for r in reversed(self.releases)
        ]
        return web.json_response(listed)

    def _release(self, request: web.Request) -> dict[str, Any] | None:
        version = request.match_info["version"]
        return next((r for r in self.releases if r["version"] == version), None)

    async def _release_commits(self, request: web.Request) -> web.Response:
        release = self._release(request)
        return web.json_response(release["commits"]) if release else _not_found()

    async def _release_deploys(self, request: web.Request) -> web.Response:
        release = self._release(request)
        return web.json_response(release["deploys"]) if release else _not_found()

    async def _latest_event(self, request: web.Request) -> web.Response:
        issue = self.issues.get(request.match_info["issue_id"])
        return web.json_response(issue.latest_event) if issue else _not_found()


def _decode(raw: bytes) -> Any:
    """A request body as JSON when it is JSON, else as text (None when empty)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _parse_time(text: str | None) -> datetime | None:
    """Sentry's `start`/`end` (naive means UTC) or an event's `dateCreated`."""
    if not text:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _event_summary(event: Mapping[str, Any]) -> dict[str, Any]:
    """An event as the list endpoint gives it without `full`: no entries."""
    return {k: v for k, v in event.items() if k != "entries"}


def _not_found() -> web.Response:
    return web.json_response({"detail": "The requested resource does not exist"}, status=404)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _culprit(frames: Sequence[Mapping[str, Any]]) -> str:
    """Sentry's culprit: the innermost in-app frame, as `module in function`."""
    in_app = [frame for frame in frames if frame.get("in_app")] or list(frames)
    if not in_app:
        return ""
    frame = in_app[-1]
    return f"{frame.get('module') or frame.get('filename')} in {frame.get('function')}"


def _api_frame(frame: Mapping[str, Any]) -> dict[str, Any]:
    """An SDK frame the way the API returns it: camelCase, source as numbered pairs."""
    lineno = frame.get("lineno")
    context: list[list[Any]] = []
    if lineno is not None and frame.get("context_line") is not None:
        pre = list(frame.get("pre_context") or [])
        post = list(frame.get("post_context") or [])
        lines = [*pre, frame["context_line"], *post]
        context = [[lineno - len(pre) + offset, line] for offset, line in enumerate(lines)]
    return {
        "filename": frame.get("filename"),
        "absPath": frame.get("abs_path") or frame.get("filename"),
        "module": frame.get("module"),
        "package": None,
        "platform": None,
        "instructionAddr": None,
        "symbolAddr": None,
        "function": frame.get("function"),
        "rawFunction": None,
        "symbol": None,
        "context": context,
        "lineNo": lineno,
        "colNo": frame.get("colno"),
        "inApp": bool(frame.get("in_app")),
        "trust": None,
        "errors": None,
        "vars": frame.get("vars") or {},
    }


def _api_breadcrumb(crumb: Mapping[str, Any]) -> dict[str, Any]:
    timestamp = crumb.get("timestamp") or datetime.now(UTC)
    if isinstance(timestamp, int | float):
        timestamp = datetime.fromtimestamp(timestamp, UTC)
    if isinstance(timestamp, datetime):
        timestamp = _iso(timestamp)
    return {
        "type": crumb.get("type", "default"),
        "timestamp": timestamp,
        "level": crumb.get("level", "info"),
        "message": crumb.get("message"),
        "category": crumb.get("category"),
        "data": crumb.get("data"),
        "event_id": None,
    }

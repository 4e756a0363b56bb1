"""A local Sentry: the handful of web API endpoints Fixbot reads, over real HTTP.

    async with FakeSentry(token="sntrys-test", org="acme") as sentry:
        issue_id = sentry.add_issue(short_id="SHOP-1", frames=[...])
        client = SentryClient(sentry.url, "sntrys-test", "acme")

Payloads follow Sentry's API: the short-id lookup, issue details, and the latest
event with `entries` of type `exception` and `breadcrumbs`. Every request must
carry `Authorization: Bearer <token>` (401 otherwise); unknown things are 404.
Everything received is kept in `requests`. `sentry.faults` injects errors and holds
requests (fakes/faults.py).
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
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


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeSentry:
    """Sentry's web API for one organization, backed by issues added with `add_issue`."""

    def __init__(self, *, token: str = "sentry-token", org: str = "acme") -> None:
        self.token = token
        self.org = org
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.issues: dict[str, FakeIssue] = {}
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
            app.router.add_get(f"{base}/events/latest/", self._latest_event)
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
        self.issues[issue_id] = FakeIssue(issue_id, short_id.upper(), project, group, event)
        return issue_id

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

"""A local Jira Cloud: issues, comments and transitions of REST v3, over real HTTP.

    async with FakeJira(email="bot@acme.test", token="jira-test") as jira:
        jira.add_issue("SHOP-42", "Cart total crashes", description="Steps…")
        client = JiraClient(jira.url, "bot@acme.test", "jira-test")
        ...
        assert jira.issue("SHOP-42").status == "Done"

Every request needs HTTP Basic auth with the email and API token (401
otherwise); unknown issues are 404 with Jira's `errorMessages`. Descriptions
and comments are Atlassian Document Format (ADF), as in v3. Every issue may
take any transition in `transitions` (Jira's simplified workflow), except to
the status it is already in.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from aiohttp import web

DEFAULT_TRANSITIONS = {"To Do": "To Do", "In Progress": "In Progress", "Done": "Done"}
"""Transition name to the status it leads to."""


@dataclass
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeJiraIssue:
    """An issue as the fake holds it; `comments` are ADF documents, oldest first."""

    id: str
    key: str
    summary: str
    description: dict[str, Any] | None
    labels: list[str]
    status: str
    comments: list[dict[str, Any]] = field(default_factory=list)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeJira:
    """Jira Cloud's REST v3 for issues added with `add_issue`."""

    def __init__(
        self,
        *,
        email: str = "fixbot@example.com",
        token: str = "jira-token",
        transitions: Mapping[str, str] = DEFAULT_TRANSITIONS,
    ) -> None:
        self.email = email
        self.token = token
        self.transitions = dict(transitions)
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.issues: dict[str, FakeJiraIssue] = {}
        self._ids = itertools.count(10001)
        self._runner: web.AppRunner | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> str:
        """Listen on a free port of 127.0.0.1; returns (and sets) `url`."""
        app = web.Application(middlewares=[self._record_and_authenticate])
        issue = "/rest/api/3/issue/{key}"
        app.router.add_get("/rest/api/3/myself", self._myself)
        app.router.add_get(issue, self._get_issue)
        app.router.add_post(issue + "/comment", self._add_comment)
        app.router.add_get(issue + "/comment", self._list_comments)
        app.router.add_get(issue + "/transitions", self._list_transitions)
        app.router.add_post(issue + "/transitions", self._do_transition)
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
        key: str,
        summary: str,
        description: str | Mapping[str, Any] | None = None,
        labels: Sequence[str] = (),
        status: str = "To Do",
    ) -> FakeJiraIssue:
        """Add an issue; a text description is stored as ADF paragraphs."""
        adf = _paragraphs(description) if isinstance(description, str) else description
        issue = FakeJiraIssue(
            id=str(next(self._ids)),
            key=key,
            summary=summary,
            description=dict(adf) if adf is not None else None,
            labels=list(labels),
            status=status,
        )
        self.issues[key] = issue
        return issue

    def issue(self, key: str) -> FakeJiraIssue:
        """An issue as it stands now (status, comments)."""
        return self.issues[key]

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
        expected = base64.b64encode(f"{self.email}:{self.token}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            # Jira answers a bad token with plain text, not JSON.
            return web.Response(
                status=401, text="Client must be authenticated to access this resource."
            )
        return await handler(request)

    def _issue_or_404(self, request: web.Request) -> FakeJiraIssue:
        issue = self.issues.get(request.match_info["key"])
        if issue is None:
            raise _jira_error(
                web.HTTPNotFound, "Issue does not exist or you do not have permission to see it."
            )
        return issue

    def _available(self, issue: FakeJiraIssue) -> list[dict[str, Any]]:
        return [
            {
                "id": str(11 + 10 * index),
                "name": name,
                "to": {"id": str(index + 1), "name": status},
                "hasScreen": False,
                "isAvailable": True,
            }
            for index, (name, status) in enumerate(self.transitions.items())
            if status != issue.status
        ]

    async def _myself(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"accountId": "fixbot-account", "emailAddress": self.email, "displayName": "Fixbot"}
        )

    async def _get_issue(self, request: web.Request) -> web.Response:
        issue = self._issue_or_404(request)
        fields: dict[str, Any] = {
            "summary": issue.summary,
            "description": issue.description,
            "labels": issue.labels,
            "status": {"name": issue.status, "statusCategory": {"name": issue.status}},
            "issuetype": {"name": "Bug"},
            "project": {"key": issue.key.split("-")[0]},
        }
        wanted = request.query.get("fields")
        if wanted:
            fields = {name: value for name, value in fields.items() if name in wanted.split(",")}
        return web.json_response(
            {
                "id": issue.id,
                "key": issue.key,
                "self": f"{self.url}/rest/api/3/issue/{issue.id}",
                "fields": fields,
            }
        )

    async def _list_comments(self, request: web.Request) -> web.Response:
        issue = self._issue_or_404(request)
        comments = [
            {"id": f"{issue.id}{number:03d}", "body": body}
            for number, body in enumerate(issue.comments, start=1)
        ]
        return web.json_response(
            {"startAt": 0, "maxResults": 100, "total": len(comments), "comments": comments}
        )

    async def _add_comment(self, request: web.Request) -> web.Response:
        issue = self._issue_or_404(request)
        payload = await _json_body(request)
        body = payload.get("body")
        if not (isinstance(body, dict) and body.get("type") == "doc" and body.get("version") == 1):
            raise _jira_error(
                web.HTTPBadRequest, field_errors={"comment": "Comment body is not valid!"}
            )
        issue.comments.append(body)
        comment_id = f"{issue.id}{len(issue.comments):03d}"
        return web.json_response(
            {
                "id": comment_id,
                "self": f"{self.url}/rest/api/3/issue/{issue.id}/comment/{comment_id}",
                "body": body,
                "author": {"displayName": "Fixbot", "emailAddress": self.email},
                "created": datetime.now(UTC).isoformat(),
            },
            status=201,
        )

    async def _list_transitions(self, request: web.Request) -> web.Response:
        issue = self._issue_or_404(request)
        return web.json_response({"expand": "transitions", "transitions": self._available(issue)})

    async def _do_transition(self, request: web.Request) -> web.Response:
        issue = self._issue_or_404(request)
        payload = await _json_body(request)
        wanted = str((payload.get("transition") or {}).get("id"))
        chosen = next((t for t in self._available(issue) if t["id"] == wanted), None)
        if chosen is None:
            raise _jira_error(
                web.HTTPBadRequest, f"Transition id '{wanted}' is not valid for this issue."
            )
        issue.status = chosen["to"]["name"]
        return web.Response(status=204)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _jira_error(web.HTTPBadRequest, "Unexpected character in the request body.")
    return body


def _jira_error(
    kind: type[web.HTTPException],
    *messages: str,
    field_errors: Mapping[str, str] | None = None,
) -> web.HTTPException:
    body = {"errorMessages": list(messages), "errors": dict(field_errors or {})}
    return kind(text=json.dumps(body), content_type="application/json")


def _paragraphs(text: str) -> dict[str, Any]:
    """Plain text as an ADF document of paragraphs (blank lines part them)."""
    paragraphs = [part.strip() for part in text.split("\n\n") if part.strip()]
    content = [
        {"type": "paragraph", "content": [{"type": "text", "text": paragraph}]}
        for paragraph in paragraphs
    ]
    return {"type": "doc", "version": 1, "content": content}


def _decode(raw: bytes) -> Any:
    """A request body as JSON when it is JSON, else as text (None when empty)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")

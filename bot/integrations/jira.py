"""Jira Cloud (REST v3): read an issue, comment on it, move it along its workflow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from bot.integrations import DEFAULT_TIMEOUT_S, ServiceClient

_INLINE = {"text", "hardBreak", "mention", "emoji", "inlineCard", "date", "status", "media"}


def adf_to_text(document: Any) -> str:
    """Plain text of an Atlassian Document Format value (a plain string passes through)."""
    if document is None:
        return ""
    if isinstance(document, str):
        return document
    return _render(document).strip()


def text_to_adf(text: str) -> dict[str, Any]:
    """An ADF document for plain text: blank lines part paragraphs, newlines become breaks."""
    paragraphs = [part for part in text.replace("\r\n", "\n").split("\n\n") if part.strip()]
    content = []
    for paragraph in paragraphs:
        inline: list[dict[str, Any]] = []
        for number, line in enumerate(paragraph.strip("\n").split("\n")):
            if number:
                inline.append({"type": "hardBreak"})
            if line:
                inline.append({"type": "text", "text": line})
        content.append({"type": "paragraph", "content": inline})
    return {"type": "doc", "version": 1, "content": content}


class JiraIssue(BaseModel):
    """A Jira issue, its description as plain text."""

    key: str
    summary: str
    description: str = ""
    labels: list[str] = []
    status: str = ""
    issue_type: str = ""
    url: str = ""

    @classmethod
    def from_api(cls, data: Mapping[str, Any], *, site_url: str = "") -> Self:
        fields = data["fields"]
        return cls(
            key=data["key"],
            summary=fields.get("summary") or "",
            description=adf_to_text(fields.get("description")),
            labels=list(fields.get("labels") or []),
            status=(fields.get("status") or {}).get("name") or "",
            issue_type=(fields.get("issuetype") or {}).get("name") or "",
            url=f"{site_url}/browse/{data['key']}" if site_url else "",
        )


class JiraComment(BaseModel):
    """A comment, its body as plain text."""

    id: str
    body: str

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        return cls(id=str(data["id"]), body=adf_to_text(data.get("body")))


class JiraTransition(BaseModel):
    """A move an issue can make now, and the status it lands in."""

    id: str
    name: str
    to_status: str = ""

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        to_status = (data.get("to") or {}).get("name") or ""
        return cls(id=str(data["id"]), name=data["name"], to_status=to_status)


class JiraClient(ServiceClient):
    """Jira Cloud's REST API v3, authenticated with an account email and an API token."""

    service = "Jira"
    token_setting = "JIRA_EMAIL and JIRA_API_TOKEN"

    def __init__(
        self,
        base_url: str,
        email: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            headers={"Accept": "application/json"},
            auth=httpx.BasicAuth(email, token),
            timeout=timeout,
            transport=transport,
        )

    async def check(self) -> str:
        """Confirm the credentials work; returns the account's name."""
        data = await self.request("GET", "/rest/api/3/myself", what="the signed-in account")
        if not isinstance(data, dict):
            return "?"
        return str(data.get("displayName") or data.get("emailAddress") or "?")

    async def get_issue(self, key: str) -> JiraIssue:
        """An issue by key (`SHOP-42`)."""
        what = f"issue {key}"
        data = await self.request(
            "GET",
            _issue_path(key),
            params={"fields": "summary,description,labels,status,issuetype"},
            what=what,
        )
        return self.parse(lambda d: JiraIssue.from_api(d, site_url=self.base_url), data, what=what)

    async def add_comment(self, key: str, text: str) -> JiraComment:
        """Comment on an issue; `text` is plain text."""
        what = f"a comment on issue {key}"
        data = await self.request(
            "POST", _issue_path(key, "comment"), json={"body": text_to_adf(text)}, what=what
        )
        return self.parse(JiraComment.from_api, data, what=what)

    async def comments(self, key: str) -> list[JiraComment]:
        """The issue's comments, oldest first (the first page: up to 100)."""
        what = f"the comments on issue {key}"
        data = await self.request(
            "GET", _issue_path(key, "comment"), params={"maxResults": "100"}, what=what
        )
        return self.parse(
            lambda d: [JiraComment.from_api(c) for c in d["comments"]], data, what=what
        )

    async def transitions(self, key: str) -> list[JiraTransition]:
        """The moves the issue can make from its current status."""
        what = f"the transitions of issue {key}"
        data = await self.request("GET", _issue_path(key, "transitions"), what=what)
        return self.parse(
            lambda d: [JiraTransition.from_api(t) for t in d["transitions"]], data, what=what
        )

    async def transition(self, key: str, name: str) -> JiraTransition:
        """Move an issue by a transition's name, or its target status's name (any case)."""
        available = await self.transitions(key)
        wanted = name.strip().casefold()
        chosen = next((t for t in available if t.name.casefold() == wanted), None) or next(
            (t for t in available if t.to_status.casefold() == wanted), None
        )
        if chosen is None:
            names = ", ".join(t.name for t in available) or "none"
            raise self.error(f"issue {key} has no transition named {name!r}; it has: {names}.")
        await self.request(
            "POST",
            _issue_path(key, "transitions"),
            json={"transition": {"id": chosen.id}},
            what=f"moving issue {key} to {chosen.name}",
        )
        return chosen


def _issue_path(key: str, *rest: str) -> str:
    return "/rest/api/3/issue/" + "/".join(quote(part, safe="") for part in (key, *rest))


def _render(node: Mapping[str, Any]) -> str:
    kind = node.get("type")
    attrs = node.get("attrs") or {}
    children = node.get("content") or []
    match kind:
        case "text":
            return str(node.get("text") or "")
        case "hardBreak":
            return "\n"
        case "mention" | "emoji" | "status":
            return str(attrs.get("text") or attrs.get("shortName") or "")
        case "inlineCard" | "blockCard" | "embedCard":
            return str(attrs.get("url") or "")
        case "rule":
            return "---"
        case "codeBlock":
            return "```\n" + _join(children) + "\n```"
        case "blockquote":
            return "\n".join("> " + line for line in _join(children).splitlines())
        case "bulletList" | "orderedList":
            start = int(attrs.get("order") or 1)
            items = []
            for offset, item in enumerate(children):
                marker = "-" if kind == "bulletList" else f"{start + offset}."
                text = _join(item.get("content") or [], separator="\n")
                first, *rest = text.splitlines() or [""]
                items.append("\n".join([f"{marker} {first}", *("  " + line for line in rest)]))
            return "\n".join(items)
        case "table":
            return "\n".join(_render(row) for row in children)
        case "tableRow":
            return " | ".join(_join(cell.get("content") or []) for cell in children)
        case _:
            return _join(children)


def _join(nodes: list[Mapping[str, Any]], separator: str = "\n\n") -> str:
    """Inline nodes run together; blocks are parted by `separator`."""
    parts: list[str] = []
    for node in nodes:
        text = _render(node)
        if parts and node.get("type") not in _INLINE:
            parts.append(separator)
        parts.append(text)
    return "".join(parts)

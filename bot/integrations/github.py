"""GitHub: read issues, and open, find, update and ready the pull requests Fixbot makes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from bot.integrations import DEFAULT_TIMEOUT_S, ServiceClient

API_VERSION = "2022-11-28"

MARK_READY_MUTATION = """
mutation MarkReady($id: ID!) {
  markPullRequestReadyForReview(input: {pullRequestId: $id}) {
    pullRequest { id number isDraft url }
  }
}
"""


def graphql_url(api_url: str) -> str:
    """GitHub's GraphQL endpoint for a REST base URL.

    `https://api.github.com` → `https://api.github.com/graphql`;
    GitHub Enterprise `https://ghe.example.com/api/v3` → `https://ghe.example.com/api/graphql`.
    """
    base = api_url.rstrip("/")
    if base.endswith("/api/v3"):
        base = base.removesuffix("/v3")
    return f"{base}/graphql"


class Repository(BaseModel):
    """A repository as GitHub describes it."""

    full_name: str
    default_branch: str
    private: bool = False
    html_url: str = ""

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            full_name=data["full_name"],
            default_branch=data["default_branch"],
            private=bool(data.get("private")),
            html_url=data.get("html_url") or "",
        )


class GitHubIssue(BaseModel):
    """An issue: what someone asked to have fixed."""

    number: int
    title: str
    body: str = ""
    labels: list[str] = []
    state: str = "open"
    html_url: str = ""

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            number=data["number"],
            title=data["title"],
            body=data.get("body") or "",
            labels=[
                label["name"] if isinstance(label, Mapping) else str(label)
                for label in data.get("labels") or []
            ],
            state=data.get("state") or "open",
            html_url=data.get("html_url") or "",
        )


class PullRequest(BaseModel):
    """A pull request; `head` and `base` are branch names."""

    number: int
    node_id: str
    html_url: str
    state: str
    draft: bool
    title: str
    body: str = ""
    head: str
    base: str

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            number=data["number"],
            node_id=data["node_id"],
            html_url=data["html_url"],
            state=data["state"],
            draft=bool(data.get("draft")),
            title=data["title"],
            body=data.get("body") or "",
            head=data["head"]["ref"],
            base=data["base"]["ref"],
        )


class IssueComment(BaseModel):
    """A comment on an issue or pull request."""

    id: int
    body: str
    html_url: str = ""

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        return cls(id=data["id"], body=data.get("body") or "", html_url=data.get("html_url") or "")


class GitHubClient(ServiceClient):
    """GitHub's REST API (github.com or Enterprise), with GraphQL where REST has no verb."""

    service = "GitHub"
    token_setting = "GITHUB_TOKEN"

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": "fixbot",
            },
            timeout=timeout,
            transport=transport,
        )
        self.graphql_url = graphql_url(base_url)

    async def check(self) -> str:
        """Confirm the token works; returns the login it belongs to."""
        data = await self.request("GET", "/user", what="the token's user")
        return str(data.get("login")) if isinstance(data, dict) else "?"

    async def get_repository(self, owner: str, repo: str) -> Repository:
        """A repository, with its default branch."""
        what = f"repository {owner}/{repo}"
        data = await self.request("GET", _repo_path(owner, repo), what=what)
        return self.parse(Repository.from_api, data, what=what)

    async def get_issue(self, owner: str, repo: str, number: int) -> GitHubIssue:
        """An issue by number."""
        what = f"issue {owner}/{repo}#{number}"
        data = await self.request("GET", _repo_path(owner, repo, "issues", number), what=what)
        return self.parse(GitHubIssue.from_api, data, what=what)

    async def get_pull_request(self, owner: str, repo: str, number: int) -> PullRequest:
        """A pull request by number."""
        what = f"pull request {owner}/{repo}#{number}"
        data = await self.request("GET", _repo_path(owner, repo, "pulls", number), what=what)
        return self.parse(PullRequest.from_api, data, what=what)

    async def create_pull_request(
        self,
        owner: str,
        repo: str,
        *,
        head: str,
        base: str,
        title: str,
        body: str,
        draft: bool = False,
    ) -> PullRequest:
        """Open a pull request from branch `head` into `base`."""
        what = f"a pull request from {head} into {base} in {owner}/{repo}"
        payload = {"head": head, "base": base, "title": title, "body": body, "draft": draft}
        data = await self.request("POST", _repo_path(owner, repo, "pulls"), json=payload, what=what)
        return self.parse(PullRequest.from_api, data, what=what)

    async def find_pull_request(self, owner: str, repo: str, head: str) -> PullRequest | None:
        """The open pull request from branch `head`, if there is one."""
        what = f"open pull requests from {head} in {owner}/{repo}"
        qualified_head = head if ":" in head else f"{owner}:{head}"
        data = await self.request(
            "GET",
            _repo_path(owner, repo, "pulls"),
            params={"head": qualified_head, "state": "open"},
            what=what,
        )
        pulls = self.parse(lambda d: [PullRequest.from_api(p) for p in d], data, what=what)
        return pulls[0] if pulls else None

    async def update_pull_request(
        self,
        owner: str,
        repo: str,
        number: int,
        *,
        title: str | None = None,
        body: str | None = None,
    ) -> PullRequest:
        """Change a pull request's title or body (REST cannot change draft; see below)."""
        what = f"pull request {owner}/{repo}#{number}"
        payload = {k: v for k, v in (("title", title), ("body", body)) if v is not None}
        path = _repo_path(owner, repo, "pulls", number)
        data = await self.request("PATCH", path, json=payload, what=what)
        return self.parse(PullRequest.from_api, data, what=what)

    async def mark_ready_for_review(self, owner: str, repo: str, number: int) -> PullRequest:
        """Turn a draft into a pull request ready for review (GraphQL: REST has no way)."""
        pull = await self.get_pull_request(owner, repo, number)
        if not pull.draft:
            return pull
        what = f"marking pull request {owner}/{repo}#{number} ready for review"
        data = await self.graphql(MARK_READY_MUTATION, {"id": pull.node_id}, what=what)
        result = self.parse(
            lambda d: d["markPullRequestReadyForReview"]["pullRequest"], data, what=what
        )
        return pull.model_copy(update={"draft": bool(result.get("isDraft"))})

    async def ensure_pull_request(
        self,
        owner: str,
        repo: str,
        *,
        head: str,
        base: str,
        title: str,
        body: str,
        draft: bool = False,
    ) -> PullRequest:
        """Open a pull request from `head`, or update the one already open (a retry is a no-op)."""
        existing = await self.find_pull_request(owner, repo, head)
        if existing is None:
            return await self.create_pull_request(
                owner, repo, head=head, base=base, title=title, body=body, draft=draft
            )
        if (existing.title, existing.body) != (title, body):
            existing = await self.update_pull_request(
                owner, repo, existing.number, title=title, body=body
            )
        return existing

    async def create_issue_comment(
        self, owner: str, repo: str, number: int, body: str
    ) -> IssueComment:
        """Comment on an issue or a pull request."""
        what = f"a comment on {owner}/{repo}#{number}"
        path = _repo_path(owner, repo, "issues", number, "comments")
        data = await self.request("POST", path, json={"body": body}, what=what)
        return self.parse(IssueComment.from_api, data, what=what)

    async def graphql(self, query: str, variables: Mapping[str, Any], *, what: str) -> Any:
        """Run one GraphQL operation and return its `data`; GraphQL errors raise."""
        payload = {"query": query, "variables": dict(variables)}
        answer = await self.request("POST", self.graphql_url, json=payload, what=what)
        if not isinstance(answer, dict):
            raise self.error(f"answered {what} with something that is not a GraphQL result.")
        errors = answer.get("errors") or []
        if errors:
            messages = "; ".join(str(error.get("message", error)) for error in errors)
            raise self.error(f"refused {what}: {messages}")
        return answer.get("data")


def _repo_path(owner: str, repo: str, *rest: str | int) -> str:
    segments = [owner, repo, *(str(segment) for segment in rest)]
    return "/repos/" + "/".join(quote(segment, safe="") for segment in segments)

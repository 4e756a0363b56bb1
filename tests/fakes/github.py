"""A local GitHub: repositories backed by bare git repos, issues, pull requests, over real HTTP.

    async with FakeGitHub(token="ghp-test") as github:
        github.add_repo("acme/shop", tmp_path / "shop.git", default_branch="main")
        client = GitHubClient(github.url, "ghp-test")
        ...
        assert github.pulls("acme/shop")[0].draft is False

REST lives at the root (`{url}/repos/…`, like api.github.com) and again under
`/api/v3` (like GitHub Enterprise); GraphQL at `/graphql` and `/api/graphql`.
Opening a pull request checks, with git, that both branches exist in the bare
repo and that head has commits base lacks, and answers 422 as GitHub does when
not. GraphQL knows one mutation, `markPullRequestReadyForReview`. Every request
needs `Authorization: Bearer <token>` (or `token <token>`), else 401.
`github.faults` injects errors and holds requests (fakes/faults.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from .faults import Faults

GIT_TIMEOUT_S = 10.0
DOCS_URL = "https://docs.github.com/rest"


@dataclass
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class FakePullRequest:
    """A pull request as the fake holds it."""

    number: int
    node_id: str
    head: str
    base: str
    title: str
    body: str
    draft: bool
    html_url: str
    state: str = "open"


@dataclass
class FakeIssue:
    """An issue as the fake holds it; `comments` holds every comment's body."""

    number: int
    title: str
    body: str
    labels: list[str]
    html_url: str
    state: str = "open"


@dataclass
class FakeRepo:
    """A repository: a bare git repo plus what GitHub keeps beside it."""

    full_name: str
    git_dir: Path
    default_branch: str
    issues: dict[int, FakeIssue] = field(default_factory=dict)
    pulls: dict[int, FakePullRequest] = field(default_factory=dict)
    comments: dict[int, list[str]] = field(default_factory=dict)
    numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def owner(self) -> str:
        return self.full_name.split("/")[0]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeGitHub:
    """GitHub's REST and GraphQL APIs for repositories added with `add_repo`."""

    def __init__(self, *, token: str = "github-token", login: str = "fixbot") -> None:
        self.token = token
        self.login = login
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.repos: dict[str, FakeRepo] = {}
        self._node_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.faults = Faults()

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> str:
        """Listen on a free port of 127.0.0.1; returns (and sets) `url`."""
        app = web.Application(middlewares=[self._record_and_authenticate])
        for prefix in ("", "/api/v3"):
            repo = prefix + "/repos/{owner}/{repo}"
            app.router.add_get(prefix + "/user", self._user)
            app.router.add_get(repo, self._get_repo)
            app.router.add_get(repo + "/issues/{number:\\d+}", self._get_issue)
            app.router.add_post(repo + "/issues/{number:\\d+}/comments", self._add_comment)
            app.router.add_get(repo + "/pulls", self._list_pulls)
            app.router.add_post(repo + "/pulls", self._create_pull)
            app.router.add_get(repo + "/pulls/{number:\\d+}", self._get_pull)
            app.router.add_patch(repo + "/pulls/{number:\\d+}", self._update_pull)
        app.router.add_post("/graphql", self._graphql)
        app.router.add_post("/api/graphql", self._graphql)
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

    def add_repo(self, full_name: str, bare_path: Path | str, default_branch: str = "main") -> None:
        """Serve `owner/name`, its branches read from the bare git repo at `bare_path`."""
        self.repos[full_name] = FakeRepo(full_name, Path(bare_path), default_branch)

    def add_issue(
        self, full_name: str, title: str, body: str = "", labels: Sequence[str] = ()
    ) -> int:
        """Open an issue; returns its number (issues and pull requests share numbers)."""
        repo = self.repos[full_name]
        number = next(repo.numbers)
        html_url = f"{self.url}/{full_name}/issues/{number}"
        repo.issues[number] = FakeIssue(number, title, body, list(labels), html_url)
        return number

    def pulls(self, full_name: str) -> list[FakePullRequest]:
        """The repository's pull requests, oldest first."""
        return sorted(self.repos[full_name].pulls.values(), key=lambda pull: pull.number)

    def comments(self, full_name: str, number: int) -> list[str]:
        """Bodies of the comments on an issue or pull request, oldest first."""
        return list(self.repos[full_name].comments.get(number, []))

    # ---- HTTP: plumbing --------------------------------------------------------------------

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
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "token") or credential != self.token:
            return _error(401, "Bad credentials")
        return await handler(request)

    def _repo(self, request: web.Request) -> FakeRepo:
        full_name = f"{request.match_info['owner']}/{request.match_info['repo']}"
        if full_name not in self.repos:
            raise _not_found()
        return self.repos[full_name]

    def _repo_json(self, repo: FakeRepo) -> dict[str, Any]:
        return {
            "id": abs(hash(repo.full_name)) % 10**8,
            "name": repo.full_name.split("/")[1],
            "full_name": repo.full_name,
            "owner": {"login": repo.owner, "type": "Organization"},
            "private": True,
            "html_url": f"{self.url}/{repo.full_name}",
            "clone_url": repo.git_dir.resolve().as_uri(),
            "default_branch": repo.default_branch,
        }

    async def _pull_json(self, repo: FakeRepo, pull: FakePullRequest) -> dict[str, Any]:
        def side(ref: str, sha: str | None) -> dict[str, Any]:
            return {"label": f"{repo.owner}:{ref}", "ref": ref, "sha": sha or "", "repo": None}

        return {
            "url": f"{self.url}/repos/{repo.full_name}/pulls/{pull.number}",
            "id": pull.number,
            "node_id": pull.node_id,
            "number": pull.number,
            "state": pull.state,
            "locked": False,
            "title": pull.title,
            "body": pull.body,
            "draft": pull.draft,
            "merged": False,
            "html_url": pull.html_url,
            "user": {"login": self.login},
            "head": side(pull.head, await _rev_parse(repo.git_dir, pull.head)),
            "base": side(pull.base, await _rev_parse(repo.git_dir, pull.base)),
        }

    # ---- HTTP: endpoints -------------------------------------------------------------------

    async def _user(self, request: web.Request) -> web.Response:
        return web.json_response({"login": self.login, "type": "Bot"})

    async def _get_repo(self, request: web.Request) -> web.Response:
        return web.json_response(self._repo_json(self._repo(request)))

    async def _get_issue(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        number = int(request.match_info["number"])
        if number in repo.pulls:  # GitHub serves pull requests as issues too
            pull = repo.pulls[number]
            return web.json_response(
                {
                    "number": number,
                    "title": pull.title,
                    "body": pull.body,
                    "state": pull.state,
                    "labels": [],
                    "html_url": pull.html_url,
                    "pull_request": {"html_url": pull.html_url},
                }
            )
        issue = repo.issues.get(number)
        if issue is None:
            raise _not_found()
        return web.json_response(
            {
                "id": number,
                "number": number,
                "title": issue.title,
                "body": issue.body,
                "state": issue.state,
                "labels": [{"name": label} for label in issue.labels],
                "html_url": issue.html_url,
                "user": {"login": "someone"},
            }
        )

    async def _add_comment(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        number = int(request.match_info["number"])
        if number not in repo.issues and number not in repo.pulls:
            raise _not_found()
        body = (await _json_body(request)).get("body")
        if not isinstance(body, str) or not body:
            return _validation_failed(
                {"resource": "IssueComment", "field": "body", "code": "missing_field"}
            )
        comments = repo.comments.setdefault(number, [])
        comments.append(body)
        comment_id = number * 1000 + len(comments)
        html_url = f"{self.url}/{repo.full_name}/issues/{number}#issuecomment-{comment_id}"
        return web.json_response(
            {"id": comment_id, "body": body, "html_url": html_url, "user": {"login": self.login}},
            status=201,
        )

    async def _list_pulls(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        state = request.query.get("state", "open")
        head = request.query.get("head")
        base = request.query.get("base")
        matches = [
            pull
            for pull in sorted(repo.pulls.values(), key=lambda p: -p.number)
            if state in ("all", pull.state)
            and (head is None or head == f"{repo.owner}:{pull.head}")
            and (base is None or base == pull.base)
        ]
        return web.json_response([await self._pull_json(repo, pull) for pull in matches])

    async def _create_pull(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        payload = await _json_body(request)
        for name in ("title", "head", "base"):
            if not isinstance(payload.get(name), str) or not payload[name]:
                return _validation_failed(
                    {"resource": "PullRequest", "field": name, "code": "missing_field"}
                )
        head = str(payload["head"]).removeprefix(f"{repo.owner}:")
        base = str(payload["base"])
        for name, ref in (("head", head), ("base", base)):
            if await _rev_parse(repo.git_dir, ref) is None:
                return _validation_failed(
                    {"resource": "PullRequest", "field": name, "code": "invalid"}
                )
        if any(p.head == head and p.state == "open" for p in repo.pulls.values()):
            return _validation_failed(
                {
                    "resource": "PullRequest",
                    "code": "custom",
                    "message": f"A pull request already exists for {repo.owner}:{head}.",
                }
            )
        if await _commits_between(repo.git_dir, base, head) == 0:
            return _validation_failed(
                {
                    "resource": "PullRequest",
                    "code": "custom",
                    "message": f"No commits between {base} and {head}",
                }
            )
        number = next(repo.numbers)
        pull = FakePullRequest(
            number=number,
            node_id=f"PR_kwFake{next(self._node_ids):06d}",
            head=head,
            base=base,
            title=str(payload["title"]),
            body=str(payload.get("body") or ""),
            draft=bool(payload.get("draft")),
            html_url=f"{self.url}/{repo.full_name}/pull/{number}",
        )
        repo.pulls[number] = pull
        return web.json_response(await self._pull_json(repo, pull), status=201)

    async def _get_pull(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        pull = repo.pulls.get(int(request.match_info["number"]))
        if pull is None:
            raise _not_found()
        return web.json_response(await self._pull_json(repo, pull))

    async def _update_pull(self, request: web.Request) -> web.Response:
        """Title, body, state and base change; `draft` is ignored, as on GitHub."""
        repo = self._repo(request)
        pull = repo.pulls.get(int(request.match_info["number"]))
        if pull is None:
            raise _not_found()
        payload = await _json_body(request)
        if isinstance(payload.get("title"), str):
            pull.title = payload["title"]
        if isinstance(payload.get("body"), str):
            pull.body = payload["body"]
        if payload.get("state") in ("open", "closed"):
            pull.state = payload["state"]
        if isinstance(payload.get("base"), str):
            if await _rev_parse(repo.git_dir, payload["base"]) is None:
                return _validation_failed(
                    {"resource": "PullRequest", "field": "base", "code": "invalid"}
                )
            pull.base = payload["base"]
        return web.json_response(await self._pull_json(repo, pull))

    async def _graphql(self, request: web.Request) -> web.Response:
        """`markPullRequestReadyForReview` only; its result has `id number isDraft url`."""
        payload = await _json_body(request)
        query = str(payload.get("query") or "")
        variables = payload.get("variables") or {}
        if "markPullRequestReadyForReview" not in query:
            return web.json_response(
                {"errors": [{"message": "FakeGitHub knows only markPullRequestReadyForReview."}]}
            )
        inline = re.search(r'pullRequestId:\s*"([^"]+)"', query)
        node_id = (
            variables.get("id")
            or variables.get("pullRequestId")
            or (inline.group(1) if inline else "")
        )
        pull = next(
            (
                p
                for repo in self.repos.values()
                for p in repo.pulls.values()
                if p.node_id == node_id
            ),
            None,
        )
        if pull is None:
            return web.json_response(
                {
                    "data": {"markPullRequestReadyForReview": None},
                    "errors": [
                        {
                            "type": "NOT_FOUND",
                            "path": ["markPullRequestReadyForReview"],
                            "message": f"Could not resolve to a node with the global id of "
                            f"'{node_id}'",
                        }
                    ],
                }
            )
        pull.draft = False
        result = {"id": pull.node_id, "number": pull.number, "isDraft": False, "url": pull.html_url}
        return web.json_response(
            {"data": {"markPullRequestReadyForReview": {"pullRequest": result}}}
        )


async def _git(git_dir: Path, *args: str) -> tuple[int, str]:
    """Run git against a bare repo; returns its exit status and stdout."""
    process = await asyncio.create_subprocess_exec(
        "git",
        "--git-dir",
        str(git_dir),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), GIT_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, stdout.decode().strip()


async def _rev_parse(git_dir: Path, branch: str) -> str | None:
    """The commit a branch points at, or None when there is no such branch."""
    status, sha = await _git(
        git_dir, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"
    )
    return sha if status == 0 and sha else None


async def _commits_between(git_dir: Path, base: str, head: str) -> int:
    status, count = await _git(
        git_dir, "rev-list", "--count", f"refs/heads/{base}..refs/heads/{head}"
    )
    return int(count) if status == 0 and count.isdigit() else 0


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=_error_body(400, "Problems parsing JSON"), content_type="application/json"
        )
    return body


def _decode(raw: bytes) -> Any:
    """A request body as JSON when it is JSON, else as text (None when empty)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _error(status: int, message: str, **extra: Any) -> web.Response:
    body = {"message": message, "documentation_url": DOCS_URL, "status": str(status), **extra}
    return web.json_response(body, status=status)


def _error_body(status: int, message: str) -> str:
    return json.dumps({"message": message, "documentation_url": DOCS_URL, "status": str(status)})


def _not_found() -> web.HTTPException:
    return web.HTTPNotFound(text=_error_body(404, "Not Found"), content_type="application/json")


def _validation_failed(*errors: dict[str, Any]) -> web.Response:
    return _error(422, "Validation Failed", errors=list(errors))

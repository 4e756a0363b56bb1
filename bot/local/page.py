"""The local workspace's web page: a small Slack in the browser, for the one job Fixbot does.

The page (``static/``: plain HTML, CSS and JavaScript, no build step) reads the local
Slack through a server-sent event stream, one whole snapshot per visible change, and acts
through the same calls a Slack client makes on a person's behalf: a slash command, a
message or thread reply, a button click, opening the App Home tab.

    GET  /                        the page
    GET  /ui/events?user=U        snapshots: channels, messages, that user's ephemerals and Home
    POST /ui/command              {user, channel, text: "/fix …"}
    POST /ui/message              {user, channel, text, thread_ts?}   "@fixbot" mentions the bot
    POST /ui/click                {user, channel, ts, action_id}
    POST /ui/home                 {user}                  opens App Home
    POST /ui/home/click           {user, action_id, value}
    GET  /ui/diff?branch=B        the "pull request": B against its repository's default branch
    GET  /ui/files/{id}           an uploaded file's text (the plan, PLAN.md)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from aiohttp import web

from bot.local.slack import LocalSlack
from repos.config import RepoConfig
from repos.workspace import GitError, git

STATIC = Path(__file__).resolve().parent / "static"
KEEPALIVE_S = 15.0  # a comment line this often finds closed streams
BRANCH_NAME = re.compile(r"^[\w./-]+$")


@dataclass(frozen=True)
class Person:
    """Someone the page can act as."""

    id: str
    name: str
    role: str  # what the switcher says about them


@dataclass(frozen=True)
class PageSettings:
    """What the page shows besides the workspace itself."""

    people: tuple[Person, ...]
    approvers: tuple[str, ...]  # empty: anyone may approve
    repos: tuple[RepoConfig, ...]
    demo: bool  # label every Fixbot message "demo: scripted model"
    example_command: str  # offered above the composer


def add_page(app: web.Application, slack: LocalSlack, page: PageSettings) -> None:
    """Serve the page and its calls from `app` (the local Slack's own application)."""
    streams = _Streams()
    app.on_shutdown.append(streams.close)

    async def index(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def events(request: web.Request) -> web.StreamResponse:
        user = request.query.get("user", page.people[0].id)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        seen = -1
        with contextlib.suppress(ConnectionError):
            while not streams.closing.is_set():
                if seen != slack.version:
                    seen = slack.version
                    data = json.dumps(snapshot(slack, page, user))
                    await response.write(f"data: {data}\n\n".encode())
                elif not await streams.wait_change(slack, seen):
                    await response.write(b": keepalive\n\n")
        return response

    async def command(request: web.Request) -> web.Response:
        body = await _body(request, "user", "channel", "text")
        name, _, text = str(body["text"]).strip().partition(" ")
        if not name.startswith("/"):
            raise web.HTTPBadRequest(text="a command starts with /")
        await slack.slash_command(
            text.strip(), command=name, user=body["user"], channel=body["channel"]
        )
        return web.json_response({"ok": True})

    async def message(request: web.Request) -> web.Response:
        body = await _body(request, "user", "channel", "text")
        text = _as_typed(str(body["text"]), slack.bot_user_id)
        ts = await slack.post_message(
            body["channel"], text, user=body["user"], thread_ts=body.get("thread_ts") or None
        )
        return web.json_response({"ok": True, "ts": ts})

    async def click(request: web.Request) -> web.Response:
        body = await _body(request, "user", "channel", "ts", "action_id")
        with _stale_click():
            await slack.click_button(
                body["channel"], body["ts"], body["action_id"], user=body["user"]
            )
        return web.json_response({"ok": True})

    async def home(request: web.Request) -> web.Response:
        body = await _body(request, "user")
        await slack.open_app_home(body["user"])
        return web.json_response({"ok": True})

    async def home_click(request: web.Request) -> web.Response:
        body = await _body(request, "user", "action_id")
        with _stale_click():
            await slack.click_home_button(
                body["action_id"], user=body["user"], value=body.get("value")
            )
        return web.json_response({"ok": True})

    async def diff(request: web.Request) -> web.Response:
        branch = request.query.get("branch", "")
        if not BRANCH_NAME.match(branch) or branch.startswith("-"):
            raise web.HTTPBadRequest(text="not a branch name")
        for repo in page.repos:
            text = await _branch_diff(repo, branch)
            if text is not None:
                return web.json_response({"repo": repo.name, "branch": branch, "diff": text})
        raise web.HTTPNotFound(text=f"no local repository has a branch {branch}")

    async def file(request: web.Request) -> web.Response:
        upload = slack.files.get(request.match_info["file_id"])
        if upload is None:
            raise web.HTTPNotFound(text="no such file")
        return web.Response(text=upload.text, content_type="text/plain")

    app.router.add_get("/", index)
    app.router.add_static("/static", STATIC)
    app.router.add_get("/ui/events", events)
    app.router.add_post("/ui/command", command)
    app.router.add_post("/ui/message", message)
    app.router.add_post("/ui/click", click)
    app.router.add_post("/ui/home", home)
    app.router.add_post("/ui/home/click", home_click)
    app.router.add_get("/ui/diff", diff)
    app.router.add_get("/ui/files/{file_id}", file)


def snapshot(slack: LocalSlack, page: PageSettings, user: str) -> dict[str, Any]:
    """What `user` sees: every channel's messages and replies, their ephemerals, their Home."""
    channels = []
    for channel_id, name in slack.channels().items():
        messages = []
        for parent in slack.messages(channel_id):
            replies = slack.thread(channel_id, parent["ts"])[1:] if "thread_ts" in parent else []
            messages.append({**parent, "replies": replies})
        channels.append({"id": channel_id, "name": name, "messages": messages})
    return {
        "version": slack.version,
        "bot_user_id": slack.bot_user_id,
        "people": [asdict(person) for person in page.people],
        "approvers": list(page.approvers),
        "demo": page.demo,
        "example_command": page.example_command,
        "channels": channels,
        "ephemerals": slack.ephemerals(user),
        "home": slack.home_view(user),
    }


class _Streams:
    """The open event streams, ended when the server stops."""

    def __init__(self) -> None:
        self.closing = asyncio.Event()

    async def wait_change(self, slack: LocalSlack, seen: int) -> bool:
        """Wait for a change (True), for the keepalive interval or for the end (False)."""
        change = asyncio.ensure_future(slack.next_change(seen))
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait(
                {change, closing}, timeout=KEEPALIVE_S, return_when="FIRST_COMPLETED"
            )
        finally:
            change.cancel()
            closing.cancel()
        return slack.version != seen

    async def close(self, _app: web.Application) -> None:
        self.closing.set()


@contextlib.contextmanager
def _stale_click() -> Iterator[None]:
    """The local Slack says a click cannot land (the button went, nobody acknowledged) with
    AssertionError, its tests' failure; the page gets 409 and the sentence."""
    try:
        yield
    except AssertionError as error:
        raise web.HTTPConflict(text=str(error).splitlines()[0]) from None


async def _body(request: web.Request, *required: str) -> dict[str, Any]:
    """The call's JSON object, which must hold every `required` key."""
    body = await request.json()
    if not isinstance(body, dict) or not all(body.get(key) for key in required):
        raise web.HTTPBadRequest(text=f"expected a JSON object with {', '.join(required)}")
    return body


def _as_typed(text: str, bot_user_id: str) -> str:
    """What a Slack client sends for typed text: &, < and > escaped, @fixbot a mention."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"(?<![\w@])@fixbot\b", f"<@{bot_user_id}>", escaped, flags=re.IGNORECASE)


async def _branch_diff(repo: RepoConfig, branch: str) -> str | None:
    """`branch` against the default branch in a repository on this machine, if it has it."""
    location = urlparse(repo.clone_url)
    if location.scheme not in ("", "file"):
        return None
    path = Path(unquote(location.path))
    try:
        await git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", cwd=path)
        return await git("diff", f"{repo.default_branch}...{branch}", cwd=path)
    except (GitError, OSError):  # not this repository's branch, or no such directory
        return None

"""A local Slack: a real Web API and Socket Mode server on 127.0.0.1.

Fixbot talks to it over the network exactly as it talks to Slack, so tests (and
people trying Fixbot without a workspace, through ``bot.local.page``) can type
``/fix SHOP-1``, click ``Approve`` and read the thread. Everything lives in memory.
Every Web API call is checked against Slack's published description (see
``slack_spec``); a call Slack would refuse is answered with Slack's error and kept in
``violations``.

Surface::

    async with LocalSlack() as slack:         # port 0: a free port is chosen
        slack.api_url                          # AsyncWebClient(base_url=slack.api_url)
        # or served by another aiohttp server: app.add_subapp("/local", slack.make_app())
        # with LocalSlack(public_url="http://127.0.0.1:8080/local")
        slack.bot_token, slack.app_token, slack.bot_user_id, slack.bot_id
        slack.connected                        # open Socket Mode connections
        await slack.wait_connected(n=1)

        # what people do; each returns when Slack would have delivered it
        ack = await slack.slash_command("SHOP-1", command="/fix", user="U_ALICE")
        ack = await slack.click_button(channel, message_ts, "approve", user="U_ALICE")
        ack = await slack.click_home_button("approve", user="U_ALICE", value="12:1")
        ts = await slack.post_message(channel, text, user=None, bot_id=None, ...)
        ts = await slack.reply_in_thread(channel, thread_ts, text, user="U_ALICE")
        ts = await slack.mention(channel, "<@UFIXBOT> status", user="U_ALICE")
        await slack.open_app_home("U_ALICE")
        await slack.request_refresh()          # Slack's `disconnect: refresh_requested`

        # what Slack holds
        slack.messages(channel)                # top-level messages, oldest first
        slack.thread(channel, thread_ts)       # parent first, then replies
        slack.ephemerals(user=None)            # chat.postEphemeral and response_url
        slack.home_view(user), slack.opened_views, slack.files
        slack.calls, slack.call_counts(), slack.acks, slack.violations
        slack.channels(), slack.version        # version counts changes people could see
        await slack.wait_for(lambda: ..., timeout=10)
        await slack.next_change(seen_version)

        # how Slack pushes back
        slack.rate_limit("chat.update")        # published tier; "*" for every method
        slack.force_429("chat.postMessage", retry_after=1, times=1)
        slack.force_503("chat.postMessage", times=4)  # Slack briefly down for that method
        slack.answer_late("chat.postMessage", seconds=5)  # done at once, answered late
        await slack.deliver_again(ack.envelope_id)  # as Slack does when an ack is lost

Envelopes not acknowledged within ``ack_timeout`` seconds (3, as Slack) are sent
again, to any connection, with ``retry_attempt`` counting up and ``retry_reason``
``"timeout"``, at most three times.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import math
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import WSMsgType, web

from .slack_spec import (
    MESSAGE_BLOCK_LIMIT,
    VIEW_BLOCK_LIMIT,
    WebApiSpec,
    check_blocks,
)

__all__ = ["Ack", "LocalSlack", "UploadedFile", "Violation"]

T = TypeVar("T")

MAX_RETRIES = 3
TIER_PER_MINUTE = {1: 1, 2: 20, 3: 50, 4: 100}
METHOD_TIERS = {
    "apps.connections.open": 1,
    "auth.test": 4,
    "chat.delete": 3,
    "chat.getPermalink": 4,
    "chat.postEphemeral": 4,
    "chat.update": 3,
    "conversations.history": 3,
    "conversations.info": 3,
    "conversations.join": 3,
    "conversations.members": 4,
    "conversations.replies": 3,
    "files.completeUploadExternal": 4,
    "files.getUploadURLExternal": 4,
    "files.upload": 2,
    "reactions.add": 3,
    "team.info": 3,
    "users.info": 4,
    "views.open": 4,
    "views.publish": 4,
}
# chat.postMessage is "special": about one message a second per channel, short bursts allowed.
POST_MESSAGE_PER_MINUTE = 60
POST_MESSAGE_BURST = 5
JSON_ARGUMENTS = ("blocks", "attachments", "metadata", "view", "files")
TRIGGER_LIFETIME_S = 3.0
RESPONSE_URL_USES = 5


@dataclass(frozen=True)
class Ack:
    """How the app acknowledged one envelope."""

    envelope_id: str
    type: str
    latency_s: float  # from the first delivery to the acknowledgement
    retry_attempt: int  # the delivery that was acknowledged (0: the first)
    payload: dict[str, Any] | None = None  # the response payload sent with the ack


@dataclass(frozen=True)
class Violation:
    """A call Slack would have refused."""

    method: str
    error: str
    detail: str

    def __str__(self) -> str:
        return f"{self.method}: {self.error}: {self.detail}"


@dataclass
class UploadedFile:
    """A file uploaded through files.getUploadURLExternal or files.upload."""

    id: str
    name: str
    title: str
    content: bytes = b""
    channel: str | None = None
    thread_ts: str | None = None

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class SlackError(Exception):
    """A Web API error answered as ``{"ok": false, "error": ...}``."""

    def __init__(self, error: str, *, detail: str = "", violation: bool = False) -> None:
        super().__init__(error)
        self.error = error
        self.detail = detail
        self.violation = violation


@dataclass
class _Channel:
    id: str
    name: str
    members: set[str] = field(default_factory=set)
    messages: list[dict[str, Any]] = field(default_factory=list)  # every message, by ts


@dataclass
class _Envelope:
    id: str
    type: str
    payload: dict[str, Any]
    accepts_response_payload: bool
    acked: asyncio.Future[Ack | None]
    retry_attempt: int = 0
    first_sent_at: float | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "envelope_id": self.id,
                "type": self.type,
                "payload": self.payload,
                "accepts_response_payload": self.accepts_response_payload,
                "retry_attempt": self.retry_attempt,
                "retry_reason": "timeout" if self.retry_attempt else "",
            }
        )


@dataclass
class _ResponseUrl:
    channel: str
    user: str
    message_ts: str | None = None  # the message whose button was clicked
    thread_ts: str | None = None
    uses: int = 0


@dataclass
class _Bucket:
    per_minute: float
    capacity: float
    tokens: float
    updated: float

    def take(self) -> float:
        """Take one token; 0 when allowed, else seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.per_minute / 60)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) * 60 / self.per_minute


class LocalSlack:
    """An in-memory Slack workspace served over HTTP and WebSocket on loopback."""

    def __init__(
        self,
        *,
        port: int = 0,
        bot_token: str = "xoxb-local",
        app_token: str = "xapp-local",
        bot_user_id: str = "UFIXBOT",
        bot_id: str = "BFIXBOT",
        app_id: str = "AFIXBOT",
        team_id: str = "TLOCAL",
        channels: dict[str, str] | None = None,
        ack_timeout: float = 3.0,
        spec_path: str | Path | None = None,
        public_url: str | None = None,
        first_ts: float = 1_700_000_000.0001,  # people watching want the clock's time here
    ) -> None:
        self.port = port
        self.public_url = public_url  # where it is served when mounted in another server
        self.bot_token = bot_token
        self.app_token = app_token
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.team_id = team_id
        self.ack_timeout = ack_timeout
        self.spec = WebApiSpec.load(spec_path)

        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.violations: list[Violation] = []
        self.acks: list[Ack] = []
        self.files: dict[str, UploadedFile] = {}
        self.opened_views: list[dict[str, Any]] = []
        self.connections_opened = 0

        self._channels: dict[str, _Channel] = {}
        for channel_id, name in (channels or {"C_GENERAL": "general"}).items():
            self.add_channel(channel_id, name)
        self._ephemerals: list[dict[str, Any]] = []
        self._home_views: dict[str, dict[str, Any]] = {}
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._triggers: dict[str, float] = {}
        self._tickets: set[str] = set()
        self._sockets: list[web.WebSocketResponse] = []
        self._refreshing: set[web.WebSocketResponse] = set()
        self._socket_turn = itertools.count()
        self._socket_open = asyncio.Event()
        self._envelopes: dict[str, _Envelope] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ts_counter = itertools.count(round(first_ts * 1_000_000), 100)
        self._ids = itertools.count(1)
        self._buckets: dict[str, _Bucket] = {}
        self._rate_limited: dict[str, float | None] = {}
        self._forced_429: dict[str, deque[int]] = {}
        self._forced_503: Counter[str] = Counter()
        self._late_answers: dict[str, deque[float]] = {}
        self._runner: web.AppRunner | None = None
        self._closing = False
        self.version = 0
        self._change = asyncio.Event()
        self._web_api: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "auth.test": self._auth_test,
            "apps.connections.open": self._apps_connections_open,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.delete": self._chat_delete,
            "chat.getPermalink": self._chat_get_permalink,
            "conversations.replies": self._conversations_replies,
            "conversations.history": self._conversations_history,
            "conversations.info": self._conversations_info,
            "conversations.join": self._conversations_join,
            "conversations.members": self._conversations_members,
            "users.info": self._users_info,
            "reactions.add": self._reactions_add,
            "views.publish": self._views_publish,
            "views.open": self._views_open,
            "files.getUploadURLExternal": self._files_get_upload_url_external,
            "files.completeUploadExternal": self._files_complete_upload_external,
            "files.upload": self._files_upload,
            "team.info": self._team_info,
        }

    # ------------------------------------------------------------------ lifecycle

    def make_app(self) -> web.Application:
        """The Web API, Socket Mode, response_url and upload routes, to serve or to mount."""
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._handle_web_api)
        app.router.add_get("/socket", self._handle_socket)
        app.router.add_post("/response/{response_id}", self._handle_response_url)
        app.router.add_post("/upload/{file_id}", self._handle_upload)
        return app

    async def start(self) -> None:
        """Start serving; ``port`` 0 picks a free port."""
        self._runner = web.AppRunner(self.make_app(), handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        """Close every connection, stop redeliveries and stop serving."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for socket in list(self._sockets):
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LocalSlack:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """Base URL for the Web API, with the trailing slash slack_sdk expects."""
        return f"{self.base_url}/api/"

    @property
    def connected(self) -> int:
        """Number of open Socket Mode connections."""
        return sum(1 for socket in self._sockets if not socket.closed)

    async def wait_connected(self, n: int = 1, timeout: float = 10) -> None:
        """Wait until at least ``n`` Socket Mode connections are open."""
        await self.wait_for(
            lambda: self.connected >= n, timeout=timeout, what=f"{n} Socket Mode connection(s)"
        )

    def add_channel(self, channel_id: str, name: str | None = None) -> None:
        """Make a public channel the bot is a member of (if it does not exist yet)."""
        if channel_id not in self._channels:
            name = name or channel_id.lower().removeprefix("c_")
            self._channels[channel_id] = _Channel(channel_id, name, {self.bot_user_id})

    def channels(self) -> dict[str, str]:
        """Every channel's name by id."""
        return {channel.id: channel.name for channel in self._channels.values()}

    async def next_change(self, seen: int) -> int:
        """Wait until ``version`` moves past ``seen`` (something visible changed); return it."""
        while self.version == seen:
            await self._change.wait()
        return self.version

    def _changed(self) -> None:
        self.version += 1
        self._change.set()
        self._change = asyncio.Event()

    # ------------------------------------------------------------------ what people do

    async def slash_command(
        self,
        text: str,
        *,
        command: str = "/fix",
        user: str = "U_ALICE",
        channel: str = "C_GENERAL",
    ) -> Ack:
        """Type ``command text`` in ``channel``; returns once the app acknowledged it."""
        self.add_channel(channel)
        response_id = self._new_response_url(channel, user)
        payload = {
            "token": "local-verification-token",
            "team_id": self.team_id,
            "team_domain": "local",
            "channel_id": channel,
            "channel_name": self._channels[channel].name,
            "user_id": user,
            "user_name": _user_name(user),
            "command": command,
            "text": text,
            "api_app_id": self.app_id,
            "is_enterprise_install": "false",
            "response_url": f"{self.base_url}/response/{response_id}",
            "trigger_id": self._new_trigger_id(),
        }
        ack = await self._deliver_and_wait("slash_commands", payload, accepts_response=True)
        if ack.payload:
            # Slack shows an ack's payload as the command's response.
            try:
                self._respond(self._response_urls[response_id], ack.payload)
            except SlackError as error:
                self.violations.append(Violation("slash command ack", error.error, error.detail))
            self._changed()
        return ack

    async def click_button(
        self,
        channel: str,
        message_ts: str,
        action_id: str,
        *,
        user: str = "U_ALICE",
        value: str | None = None,
    ) -> Ack:
        """Click the button ``action_id`` on a stored message; returns once acknowledged."""
        message = self._find_message(channel, message_ts)
        if message is None:
            raise AssertionError(f"no message {message_ts} in {channel} to click on")
        found = _find_button(message.get("blocks") or [], action_id)
        if found is None:
            buttons = [a for _, a in _buttons(message.get("blocks") or [])]
            raise AssertionError(
                f"message {message_ts} in {channel} has no button {action_id!r}; "
                f"its buttons are {[b.get('action_id') for b in buttons]}"
            )
        block_id, button = found
        thread_ts = message.get("thread_ts")
        response_id = self._new_response_url(channel, user, message_ts, thread_ts)
        action = _button_action(block_id, button, value)
        container: dict[str, Any] = {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": False,
        }
        if thread_ts:
            container["thread_ts"] = thread_ts
        payload: dict[str, Any] = {
            "type": "block_actions",
            "user": {
                "id": user,
                "username": _user_name(user),
                "name": _user_name(user),
                "team_id": self.team_id,
            },
            "api_app_id": self.app_id,
            "token": "local-verification-token",
            "container": container,
            "trigger_id": self._new_trigger_id(),
            "team": {"id": self.team_id, "domain": "local"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel, "name": self._channels[channel].name},
            "message": copy.deepcopy(message),
            "state": {"values": {}},
            "response_url": f"{self.base_url}/response/{response_id}",
            "actions": [action],
        }
        return await self._deliver_and_wait("interactive", payload, accepts_response=True)

    async def click_home_button(
        self, action_id: str, *, user: str = "U_ALICE", value: str | None = None
    ) -> Ack:
        """Click the button ``action_id`` (the one with ``value``, if given) on ``user``'s
        App Home; returns once acknowledged. As on Slack, it comes without a response_url.
        """
        view = self._home_views.get(user) or {}
        found = next(
            (
                (block_id, button)
                for block_id, button in _buttons(view.get("blocks") or [])
                if button.get("action_id") == action_id
                and (value is None or button.get("value") == value)
            ),
            None,
        )
        if found is None:
            raise AssertionError(f"{user}'s App Home has no button {action_id!r} ({value=})")
        payload: dict[str, Any] = {
            "type": "block_actions",
            "user": {
                "id": user,
                "username": _user_name(user),
                "name": _user_name(user),
                "team_id": self.team_id,
            },
            "api_app_id": self.app_id,
            "token": "local-verification-token",
            "container": {"type": "view", "view_id": view["id"]},
            "trigger_id": self._new_trigger_id(),
            "team": {"id": self.team_id, "domain": "local"},
            "enterprise": None,
            "is_enterprise_install": False,
            "view": copy.deepcopy(view),
            "actions": [_button_action(*found, None)],
        }
        return await self._deliver_and_wait("interactive", payload, accepts_response=False)

    async def post_message(
        self,
        channel: str,
        text: str,
        *,
        user: str | None = None,
        bot_id: str | None = None,
        attachments: list[dict[str, Any]] | None = None,
        blocks: list[dict[str, Any]] | None = None,
        thread_ts: str | None = None,
    ) -> str:
        """Post as a person (default ``U_ALICE``) or another bot (``bot_id``); returns its ts.

        Sends the ``message`` event, and ``app_mention`` when the text mentions the bot.
        """
        if user is None and bot_id is None:
            user = "U_ALICE"
        self.add_channel(channel)
        message: dict[str, Any] = {"type": "message", "text": text, "ts": self._next_ts()}
        if bot_id is not None:
            message["bot_id"] = bot_id
            if user is None:
                message["subtype"] = "bot_message"
                message["username"] = bot_id.lower()
        if user is not None:
            message["user"] = user
            if bot_id is None:
                message["client_msg_id"] = str(uuid.uuid4())
                message["blocks"] = [_rich_text_block(text)]
        if blocks is not None:
            message["blocks"] = blocks
        if attachments is not None:
            message["attachments"] = attachments
        message["team"] = self.team_id
        self._store(channel, message, thread_ts)
        self._changed()
        event = {**copy.deepcopy(message), "channel": channel, "event_ts": message["ts"]}
        event["channel_type"] = "channel"
        self._deliver_event(event)
        if f"<@{self.bot_user_id}>" in text and user is not None:
            mention = {**copy.deepcopy(event), "type": "app_mention"}
            mention.pop("channel_type", None)
            self._deliver_event(mention)
        return str(message["ts"])

    async def reply_in_thread(
        self, channel: str, thread_ts: str, text: str, *, user: str = "U_ALICE"
    ) -> str:
        """Reply in a thread as ``user``; sends the ``message`` event and returns the ts."""
        if self._find_message(channel, thread_ts) is None:
            raise AssertionError(f"no message {thread_ts} in {channel} to reply to")
        return await self.post_message(channel, text, user=user, thread_ts=thread_ts)

    async def mention(
        self, channel: str, text: str, *, user: str = "U_ALICE", thread_ts: str | None = None
    ) -> str:
        """Mention the bot (prefixed to ``text`` unless already there); returns the ts."""
        tag = f"<@{self.bot_user_id}>"
        if tag not in text:
            text = f"{tag} {text}"
        return await self.post_message(channel, text, user=user, thread_ts=thread_ts)

    async def open_app_home(self, user: str = "U_ALICE") -> None:
        """Open the app's Home tab as ``user`` (sends ``app_home_opened``)."""
        event: dict[str, Any] = {
            "type": "app_home_opened",
            "user": user,
            "channel": "D" + user.removeprefix("U"),
            "tab": "home",
            "event_ts": f"{time.time():.6f}",
        }
        if user in self._home_views:
            event["view"] = copy.deepcopy(self._home_views[user])
        self._deliver_event(event)

    async def request_refresh(self, timeout: float = 10) -> None:
        """Ask every connection to reconnect, as Slack does; returns once they have."""
        old_sockets = [socket for socket in self._sockets if not socket.closed]
        message = {
            "type": "disconnect",
            "reason": "refresh_requested",
            "debug_info": {"host": "applink-local"},
        }
        for socket in old_sockets:
            self._refreshing.add(socket)
            await socket.send_str(json.dumps(message))
        try:
            await self.wait_for(
                lambda: (
                    all(socket.closed for socket in old_sockets)
                    and self.connected >= len(old_sockets)
                ),
                timeout=timeout,
                what="the app to reconnect after refresh_requested",
            )
        finally:
            for socket in old_sockets:
                await socket.close()

    # ------------------------------------------------------------------ what Slack holds

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """Top-level messages of ``channel`` (thread replies excluded), oldest first."""
        stored = self._channels[channel].messages if channel in self._channels else []
        return [copy.deepcopy(m) for m in stored if m.get("thread_ts", m["ts"]) == m["ts"]]

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """The thread's parent followed by its replies, oldest first."""
        stored = self._channels[channel].messages if channel in self._channels else []
        return [
            copy.deepcopy(m)
            for m in stored
            if m["ts"] == thread_ts or m.get("thread_ts") == thread_ts
        ]

    def ephemerals(self, user: str | None = None) -> list[dict[str, Any]]:
        """Ephemeral messages (``chat.postEphemeral`` and ephemeral responses), oldest first."""
        return [copy.deepcopy(e) for e in self._ephemerals if user is None or e["user"] == user]

    def home_view(self, user: str) -> dict[str, Any] | None:
        """The App Home view last published for ``user``."""
        view = self._home_views.get(user)
        return copy.deepcopy(view) if view is not None else None

    def call_counts(self) -> Counter[str]:
        """How many times each Web API method was called."""
        return Counter(method for method, _ in self.calls)

    async def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float = 60,  # a bound for a stuck test, not a speed check: loaded machines
        *,
        what: str | None = None,
    ) -> T:
        """Poll ``predicate`` until it is truthy and return its value.

        On timeout raise AssertionError with the recent messages, ephemerals and violations.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what or _describe(predicate)}\n"
                    + self.describe()
                )
            await asyncio.sleep(0.02)

    def describe(self, last: int = 20) -> str:
        """A readable dump of recent messages, ephemerals, calls and violations."""
        lines = [f"connections: {self.connected}", "recent messages:"]
        everything = [
            (m["ts"], channel.id, m)
            for channel in self._channels.values()
            for m in channel.messages
        ]
        for ts, channel_id, message in sorted(everything)[-last:]:
            who = message.get("user") or message.get("bot_id")
            where = (
                f"{channel_id} thread {message['thread_ts']}"
                if "thread_ts" in message
                else channel_id
            )
            text = (message.get("text") or "")[:200].replace("\n", " ")
            lines.append(f"  {ts} {where} {who}: {text}")
        lines.append("ephemerals:")
        for ephemeral in self._ephemerals[-last:]:
            lines.append(f"  to {ephemeral['user']}: {(ephemeral.get('text') or '')[:200]}")
        lines.append(f"calls: {[method for method, _ in self.calls[-last:]]}")
        lines.extend(f"violation: {violation}" for violation in self.violations)
        return "\n".join(lines)

    # ------------------------------------------------------------------ rate limits

    async def deliver_again(self, envelope_id: str) -> Ack:
        """Send an envelope once more, as Slack does when it missed the acknowledgement;
        returns the new acknowledgement."""
        old = self._envelopes[envelope_id]
        envelope = _Envelope(
            id=old.id,
            type=old.type,
            payload=old.payload,
            accepts_response_payload=old.accepts_response_payload,
            acked=asyncio.get_running_loop().create_future(),
            retry_attempt=old.retry_attempt + 1,
            first_sent_at=time.monotonic(),
        )
        self._envelopes[envelope_id] = envelope
        await self._send_to_some_socket(envelope.to_json())
        ack = await asyncio.wait_for(envelope.acked, self.ack_timeout * (MAX_RETRIES + 1))
        if ack is None:
            raise AssertionError(f"the envelope {envelope_id} was not acknowledged again")
        return ack

    def rate_limit(self, method: str, per_minute: float | None = None) -> None:
        """Answer 429 when ``method`` goes over its published tier (or ``per_minute``).

        ``"*"`` limits every method at its tier. chat.postMessage is limited per channel.
        """
        self._rate_limited[method] = per_minute

    def force_429(self, method: str, retry_after: int = 1, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with 429 and ``Retry-After``."""
        self._forced_429.setdefault(method, deque()).extend([retry_after] * times)

    def force_503(self, method: str, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with HTTP 503, doing nothing:
        Slack briefly unavailable."""
        self._forced_503[method] += times

    def answer_late(self, method: str, seconds: float, times: int = 1) -> None:
        """Do the next ``times`` calls of ``method`` at once but answer them ``seconds``
        later: what they did is visible before the caller hears back."""
        self._late_answers.setdefault(method, deque()).extend([seconds] * times)

    def _retry_after(self, method: str, args: dict[str, Any]) -> int | None:
        forced = self._forced_429.get(method)
        if forced:
            return forced.popleft()
        if method in self._rate_limited:
            per_minute = self._rate_limited[method]
        elif "*" in self._rate_limited:
            per_minute = self._rate_limited["*"]
        else:
            return None
        key = method
        rate: float = per_minute or TIER_PER_MINUTE[METHOD_TIERS.get(method, 3)]
        burst = rate
        if method == "chat.postMessage":
            key = f"{method} {args.get('channel')}"
            rate, burst = per_minute or POST_MESSAGE_PER_MINUTE, POST_MESSAGE_BURST
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(rate, burst, burst, time.monotonic())
            self._buckets[key] = bucket
        wait = bucket.take()
        return max(1, math.ceil(wait)) if wait else None

    # ------------------------------------------------------------------ HTTP: Web API

    async def _handle_web_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        try:
            args, token = await _read_arguments(request)
        except ValueError as error:
            return self._refuse(method, "invalid_arguments", str(error))
        self.calls.append((method, copy.deepcopy(args)))

        if method not in self.spec.methods or method not in self._web_api:
            detail = (
                f"Slack has no Web API method {method!r}"
                if method not in self.spec.methods
                else f"the local Slack does not implement {method}"
            )
            return self._refuse(method, "unknown_method", detail)
        wanted_token = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != wanted_token:
            known = token in (self.bot_token, self.app_token)
            return web.json_response(
                {"ok": False, "error": "not_allowed_token_type" if known else "invalid_auth"}
            )
        if self._forced_503[method] > 0:
            self._forced_503[method] -= 1
            return web.json_response({"ok": False, "error": "service_unavailable"}, status=503)
        retry_after = self._retry_after(method, args)
        if retry_after is not None:
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(retry_after)},
            )
        problem = self.spec.check(method, args)
        if problem is not None:
            return self._refuse(method, problem.error, problem.detail)
        try:
            result = self._web_api[method](args)
        except SlackError as error:
            if error.violation:
                return self._refuse(method, error.error, error.detail)
            return web.json_response({"ok": False, "error": error.error})
        self._changed()
        late = self._late_answers.get(method)
        if late:
            await asyncio.sleep(late.popleft())
        return web.json_response({"ok": True, **result})

    def _refuse(self, method: str, error: str, detail: str) -> web.Response:
        self.violations.append(Violation(method, error, detail))
        body = {"ok": False, "error": error, "response_metadata": {"messages": [detail]}}
        return web.json_response(body)

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": f"{self.base_url}/",
            "team": "Local",
            "user": "fixbot",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        ticket = str(uuid.uuid4())
        self._tickets.add(ticket)
        socket_url = "ws" + self.base_url.removeprefix("http") + "/socket"
        url = f"{socket_url}?ticket={ticket}&app_id={self.app_id}"
        return {"url": url}

    def _chat_post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        message = self._bot_message(args)
        thread_ts = args.get("thread_ts") or None
        self._store(channel.id, message, thread_ts)
        return {"channel": channel.id, "ts": message["ts"], "message": copy.deepcopy(message)}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        message = self._find_message(channel.id, str(args.get("ts", "")))
        if message is None:
            raise SlackError("message_not_found")
        if message.get("bot_id") != self.bot_id:
            raise SlackError("cant_update_message")
        if "blocks" in args:
            _check_message_blocks(args["blocks"])
        for key in ("text", "blocks", "attachments", "metadata"):
            if key in args:
                message[key] = args[key]
        _fill_block_ids(message.get("blocks"))
        message["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        return {
            "channel": channel.id,
            "ts": message["ts"],
            "text": message.get("text", ""),
            "message": copy.deepcopy(message),
        }

    def _chat_post_ephemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        message = self._bot_message(args)
        ephemeral = {**message, "channel": channel.id, "user": args["user"], "source": "api"}
        if args.get("thread_ts"):
            ephemeral["thread_ts"] = args["thread_ts"]
        self._ephemerals.append(ephemeral)
        return {"message_ts": message["ts"]}

    def _chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        message = self._find_message(channel.id, str(args.get("ts", "")))
        if message is None:
            raise SlackError("message_not_found")
        if message.get("bot_id") != self.bot_id:
            raise SlackError("cant_delete_message")
        channel.messages.remove(message)
        return {"channel": channel.id, "ts": message["ts"]}

    def _chat_get_permalink(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        message = self._find_message(channel.id, str(args["message_ts"]))
        if message is None:
            raise SlackError("message_not_found")
        permalink = f"{self.base_url}/archives/{channel.id}/p{message['ts'].replace('.', '')}"
        if message.get("thread_ts", message["ts"]) != message["ts"]:
            permalink += f"?thread_ts={message['thread_ts']}&cid={channel.id}"
        return {"channel": channel.id, "permalink": permalink}

    def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        message = self._find_message(channel.id, str(args.get("ts", "")))
        if message is None:
            raise SlackError("thread_not_found")
        thread = self.thread(channel.id, message.get("thread_ts", message["ts"]))
        return _page(_between(thread, args), args)

    def _conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        newest_first = list(reversed(_between(self.messages(channel.id), args)))
        return _page(newest_first, args)

    def _conversations_info(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"channel": self._channel_object(self._channel(args))}

    def _conversations_join(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        channel.members.add(self.bot_user_id)
        return {"channel": self._channel_object(channel)}

    def _conversations_members(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        return {"members": sorted(channel.members), "response_metadata": {"next_cursor": ""}}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = str(args.get("user", ""))
        if not re.fullmatch(r"[UW][A-Z0-9_]+", user):
            raise SlackError("user_not_found")
        name = _user_name(user)
        is_bot = user == self.bot_user_id
        return {
            "user": {
                "id": user,
                "team_id": self.team_id,
                "name": name,
                "real_name": name.title(),
                "deleted": False,
                "is_bot": is_bot,
                "is_admin": False,
                "tz": "Europe/London",
                "profile": {
                    "real_name": name.title(),
                    "display_name": name,
                    "email": None if is_bot else f"{name}@example.com",
                    "bot_id": self.bot_id if is_bot else None,
                },
            }
        }

    def _reactions_add(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        message = self._find_message(channel.id, str(args["timestamp"]))
        if message is None:
            raise SlackError("message_not_found")
        reactions: list[dict[str, Any]] = message.setdefault("reactions", [])
        reaction = next((r for r in reactions if r["name"] == args["name"]), None)
        if reaction is None:
            reaction = {"name": args["name"], "users": [], "count": 0}
            reactions.append(reaction)
        if self.bot_user_id in reaction["users"]:
            raise SlackError("already_reacted")
        reaction["users"].append(self.bot_user_id)
        reaction["count"] += 1
        return {}

    def _views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        view = self._view(args)
        self._home_views[str(args["user_id"])] = view
        return {"view": copy.deepcopy(view)}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        issued = self._triggers.get(str(args["trigger_id"]))
        if issued is None:
            raise SlackError("invalid_trigger_id")
        if time.monotonic() - issued > TRIGGER_LIFETIME_S:
            raise SlackError("expired_trigger_id")
        view = self._view(args)
        self.opened_views.append(view)
        return {"view": copy.deepcopy(view)}

    def _files_get_upload_url_external(self, args: dict[str, Any]) -> dict[str, Any]:
        if "filename" not in args or "length" not in args:
            detail = "files.getUploadURLExternal needs filename and length"
            raise SlackError("invalid_arguments", detail=detail, violation=True)
        file_id = f"F{next(self._ids):08d}"
        name = str(args["filename"])
        self.files[file_id] = UploadedFile(file_id, name, name)
        return {"upload_url": f"{self.base_url}/upload/{file_id}", "file_id": file_id}

    def _files_complete_upload_external(self, args: dict[str, Any]) -> dict[str, Any]:
        entries = args.get("files")
        if not isinstance(entries, list) or not entries:
            raise SlackError("invalid_arguments", detail="files must be a list", violation=True)
        uploaded: list[UploadedFile] = []
        for entry in entries:
            upload = self.files.get(str(entry.get("id")))
            if upload is None:
                raise SlackError("file_not_found")
            upload.title = entry.get("title") or upload.title
            uploaded.append(upload)
        channel_id = args.get("channel_id") or (str(args.get("channels", "")).split(",")[0])
        if channel_id:
            self._share_files(channel_id, uploaded, args)
        return {"files": [{"id": f.id, "title": f.title} for f in uploaded]}

    def _files_upload(self, args: dict[str, Any]) -> dict[str, Any]:
        content = args.get("file", args.get("content", b""))
        if isinstance(content, str):
            content = content.encode()
        file_id = f"F{next(self._ids):08d}"
        name = str(args.get("filename") or "file")
        upload = UploadedFile(file_id, name, str(args.get("title") or name), content)
        self.files[file_id] = upload
        channel_id = str(args.get("channels", "")).split(",")[0]
        if channel_id:
            self._share_files(channel_id, [upload], args)
        return {"file": _file_object(upload)}

    def _team_info(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"team": {"id": self.team_id, "name": "Local", "domain": "local"}}

    def _share_files(
        self, channel_id: str, uploads: list[UploadedFile], args: dict[str, Any]
    ) -> None:
        channel = self._channel({"channel": channel_id})
        thread_ts = args.get("thread_ts") or None
        message = self._bot_message({"text": args.get("initial_comment", "")}, require_text=False)
        message["files"] = [_file_object(upload) for upload in uploads]
        if "blocks" in args:
            message["blocks"] = args["blocks"]
        for upload in uploads:
            upload.channel, upload.thread_ts = channel.id, thread_ts
        self._store(channel.id, message, thread_ts)

    async def _handle_upload(self, request: web.Request) -> web.Response:
        upload = self.files.get(request.match_info["file_id"])
        if upload is None:
            return web.Response(status=404, text="file not found")
        upload.content = await request.read()
        return web.Response(text=f"OK - {len(upload.content)}", content_type="text/plain")

    # ------------------------------------------------------------------ HTTP: response_url

    async def _handle_response_url(self, request: web.Request) -> web.Response:
        context = self._response_urls.get(request.match_info["response_id"])
        if context is None:
            return web.Response(status=404, text="no_such_url")
        context.uses += 1
        if context.uses > RESPONSE_URL_USES:
            self.violations.append(
                Violation("response_url", "used_url", f"used more than {RESPONSE_URL_USES} times")
            )
            return web.Response(status=404, text="used_url")
        body = await request.json()
        try:
            self._respond(context, body)
        except SlackError as error:
            self.violations.append(Violation("response_url", error.error, error.detail))
            return web.json_response({"ok": False, "error": error.error}, status=400)
        self._changed()
        return web.json_response({"ok": True})

    def _respond(self, context: _ResponseUrl, body: dict[str, Any]) -> None:
        """Apply a response_url (or slash command ack) payload the way Slack does."""
        if "blocks" in body:
            _check_message_blocks(body["blocks"])
        original = (
            self._find_message(context.channel, context.message_ts) if context.message_ts else None
        )
        if body.get("delete_original") and original is not None:
            self._channels[context.channel].messages.remove(original)
            return
        if body.get("replace_original") and original is not None:
            for key in ("text", "blocks", "attachments"):
                if key in body:
                    original[key] = body[key]
                elif key != "text":
                    original.pop(key, None)
            _fill_block_ids(original.get("blocks"))
            return
        message = self._bot_message(body, require_text=False)
        thread_ts = body.get("thread_ts") or context.thread_ts
        if body.get("response_type") == "in_channel":
            self._store(context.channel, message, thread_ts)
            return
        ephemeral = {**message, "channel": context.channel, "user": context.user}
        ephemeral["source"] = "response_url"
        if thread_ts:
            ephemeral["thread_ts"] = thread_ts
        self._ephemerals.append(ephemeral)

    # ------------------------------------------------------------------ Socket Mode

    async def _handle_socket(self, request: web.Request) -> web.StreamResponse:
        if self._closing:
            return web.Response(status=503, text="shutting down")
        if request.query.get("ticket") not in self._tickets:
            return web.Response(status=401, text="invalid ticket")
        socket = web.WebSocketResponse()  # answers the client's pings itself
        await socket.prepare(request)
        self._sockets.append(socket)
        self.connections_opened += 1
        self._socket_open.set()
        hello = {
            "type": "hello",
            "num_connections": self.connected,
            "debug_info": {
                "host": "applink-local",
                "build_number": 1,
                "approximate_connection_time": 18060,
            },
            "connection_info": {"app_id": self.app_id},
        }
        await socket.send_str(json.dumps(hello))
        try:
            async for frame in socket:
                if frame.type == WSMsgType.TEXT:
                    self._on_socket_text(frame.data)
        finally:
            self._sockets.remove(socket)
            self._refreshing.discard(socket)
            if not self._sockets:
                self._socket_open.clear()
        return socket

    def _on_socket_text(self, data: str) -> None:
        try:
            message = json.loads(data)
        except json.JSONDecodeError:
            return
        envelope = self._envelopes.get(str(message.get("envelope_id")))
        if envelope is None or envelope.acked.done() or envelope.first_sent_at is None:
            return
        payload = message.get("payload")
        ack = Ack(
            envelope_id=envelope.id,
            type=envelope.type,
            latency_s=time.monotonic() - envelope.first_sent_at,
            retry_attempt=envelope.retry_attempt,
            payload=payload if isinstance(payload, dict) else None,
        )
        self.acks.append(ack)
        envelope.acked.set_result(ack)

    def _deliver(self, kind: str, payload: dict[str, Any], accepts_response: bool) -> _Envelope:
        envelope = _Envelope(
            id=str(uuid.uuid4()),
            type=kind,
            payload=payload,
            accepts_response_payload=accepts_response,
            acked=asyncio.get_running_loop().create_future(),
        )
        self._envelopes[envelope.id] = envelope
        self._spawn(self._send_until_acked(envelope))
        return envelope

    async def _deliver_and_wait(
        self, kind: str, payload: dict[str, Any], *, accepts_response: bool
    ) -> Ack:
        envelope = self._deliver(kind, payload, accepts_response)
        ack = await envelope.acked
        if ack is None:
            raise AssertionError(
                f"the {kind} envelope was never acknowledged "
                f"({MAX_RETRIES + 1} deliveries, {self.ack_timeout}s each)\n" + self.describe()
            )
        return ack

    def _deliver_event(self, event: dict[str, Any]) -> None:
        payload = {
            "token": "local-verification-token",
            "team_id": self.team_id,
            "context_team_id": self.team_id,
            "context_enterprise_id": None,
            "api_app_id": self.app_id,
            "event": event,
            "type": "event_callback",
            "event_id": f"Ev{next(self._ids):010d}",
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-local-{uuid.uuid4().hex[:12]}",
        }
        self._deliver("events_api", payload, accepts_response=False)

    async def _send_until_acked(self, envelope: _Envelope) -> None:
        """Send, and send again to any connection while nobody acknowledges it in time."""
        for attempt in range(MAX_RETRIES + 1):
            envelope.retry_attempt = attempt
            if envelope.first_sent_at is None:
                envelope.first_sent_at = time.monotonic()
            await self._send_to_some_socket(envelope.to_json())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(envelope.acked), self.ack_timeout)
                return
        if not envelope.acked.done():
            envelope.acked.set_result(None)

    async def _send_to_some_socket(self, text: str) -> None:
        """Send to the next open connection in turn, waiting for one if none is open."""
        while True:
            await self._socket_open.wait()
            # Connections told to refresh get no new envelopes, as on Slack.
            usable = [s for s in self._sockets if not s.closed and s not in self._refreshing]
            if not usable:
                await asyncio.sleep(0.02)
                continue
            socket = usable[next(self._socket_turn) % len(usable)]
            try:
                await socket.send_str(text)
                return
            except (ConnectionError, RuntimeError):
                await asyncio.sleep(0.02)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ storage

    def _next_ts(self) -> str:
        micros = next(self._ts_counter)
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _new_trigger_id(self) -> str:
        trigger_id = f"{next(self._ids)}.{uuid.uuid4().hex[:16]}"
        self._triggers[trigger_id] = time.monotonic()
        return trigger_id

    def _new_response_url(
        self,
        channel: str,
        user: str,
        message_ts: str | None = None,
        thread_ts: str | None = None,
    ) -> str:
        response_id = uuid.uuid4().hex
        self._response_urls[response_id] = _ResponseUrl(channel, user, message_ts, thread_ts)
        return response_id

    def _channel(self, args: dict[str, Any]) -> _Channel:
        channel = self._channels.get(str(args.get("channel", "")))
        if channel is None:
            raise SlackError("channel_not_found")
        return channel

    def _channel_object(self, channel: _Channel) -> dict[str, Any]:
        return {
            "id": channel.id,
            "name": channel.name,
            "is_channel": True,
            "is_private": False,
            "is_archived": False,
            "is_member": self.bot_user_id in channel.members,
            "created": 1_700_000_000,
            "num_members": len(channel.members),
        }

    def _find_message(self, channel: str, ts: str | None) -> dict[str, Any] | None:
        if channel not in self._channels:
            return None
        return next((m for m in self._channels[channel].messages if m["ts"] == ts), None)

    def _bot_message(self, args: dict[str, Any], *, require_text: bool = True) -> dict[str, Any]:
        """A message as the bot posts it, from chat.postMessage-style arguments."""
        if require_text and not any(args.get(k) for k in ("text", "blocks", "attachments")):
            if not args.get("markdown_text"):
                raise SlackError("no_text")
        if "blocks" in args:
            _check_message_blocks(args["blocks"])
        message: dict[str, Any] = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "text": args.get("text") or args.get("markdown_text") or "",
            "ts": self._next_ts(),
            "team": self.team_id,
            "bot_profile": {
                "id": self.bot_id,
                "app_id": self.app_id,
                "name": "Fixbot",
                "team_id": self.team_id,
                "deleted": False,
            },
        }
        for key in ("blocks", "attachments", "metadata"):
            if key in args:
                message[key] = copy.deepcopy(args[key])
        _fill_block_ids(message.get("blocks"))
        return message

    def _store(self, channel_id: str, message: dict[str, Any], thread_ts: str | None) -> None:
        """Keep a message, and keep its thread's parent up to date as Slack does."""
        channel = self._channels[channel_id]
        if thread_ts:
            parent = self._find_message(channel_id, thread_ts)
            message["thread_ts"] = thread_ts  # Slack keeps it even when the parent is unknown
            if parent is not None:
                thread_ts = parent.get("thread_ts", parent["ts"])
                parent = self._find_message(channel_id, thread_ts) or parent
                message["thread_ts"] = thread_ts
                message["parent_user_id"] = parent.get("user") or parent.get("bot_id")
                parent["thread_ts"] = thread_ts
                parent["reply_count"] = parent.get("reply_count", 0) + 1
                author = message.get("user") or message.get("bot_id")
                reply_users = parent.setdefault("reply_users", [])
                if author not in reply_users:
                    reply_users.append(author)
                parent["reply_users_count"] = len(reply_users)
                parent["latest_reply"] = message["ts"]
        channel.messages.append(message)

    def _view(self, args: dict[str, Any]) -> dict[str, Any]:
        view = args.get("view")
        if not isinstance(view, dict):
            raise SlackError("invalid_arguments", detail="view must be an object", violation=True)
        problems = check_blocks(view.get("blocks", []), limit=VIEW_BLOCK_LIMIT)
        if problems:
            raise SlackError("invalid_blocks", detail="; ".join(problems), violation=True)
        stored = copy.deepcopy(view)
        _fill_block_ids(stored.get("blocks"))
        stored.update(
            {
                "id": f"V{next(self._ids):08d}",
                "team_id": self.team_id,
                "app_id": self.app_id,
                "bot_id": self.bot_id,
                "hash": uuid.uuid4().hex[:20],
            }
        )
        return stored


# ---------------------------------------------------------------------- helpers


async def _read_arguments(request: web.Request) -> tuple[dict[str, Any], str | None]:
    """The call's arguments (query, form or JSON body) and its token, as Slack reads them."""
    args: dict[str, Any] = dict(request.query)
    if request.method == "POST" and request.can_read_body:
        if request.content_type == "application/json":
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("a JSON body must be an object")
            args.update(body)
        else:
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    args[key] = value.file.read()
                    args.setdefault("filename", value.filename)
                else:
                    args[key] = value
    for key in JSON_ARGUMENTS:
        if isinstance(args.get(key), str):
            try:
                args[key] = json.loads(args[key])
            except json.JSONDecodeError as error:
                raise ValueError(f"{key} is not valid JSON: {error}") from None
    token = args.pop("token", None)
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Bearer "):
        token = authorization.removeprefix("Bearer ")
    return args, token


def _check_message_blocks(blocks: object) -> None:
    problems = check_blocks(blocks, limit=MESSAGE_BLOCK_LIMIT)
    if problems:
        raise SlackError("invalid_blocks", detail="; ".join(problems), violation=True)


def _fill_block_ids(blocks: object) -> None:
    """Slack gives every block a block_id and every element an action_id when they lack one."""
    if not isinstance(blocks, list):
        return
    for block in blocks:
        if not isinstance(block, dict):
            continue
        block.setdefault("block_id", uuid.uuid4().hex[:5])
        elements = [block.get("accessory"), *(block.get("elements") or [])]
        if block.get("type") in ("actions", "section"):
            for element in elements:
                if isinstance(element, dict) and element.get("type") == "button":
                    element.setdefault("action_id", uuid.uuid4().hex[:5])


def _buttons(blocks: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every button with the block_id of its block."""
    found: list[tuple[str, dict[str, Any]]] = []
    for block in blocks:
        elements = [block.get("accessory"), *(block.get("elements") or [])]
        for element in elements:
            if isinstance(element, dict) and element.get("type") == "button":
                found.append((str(block.get("block_id", "")), element))
    return found


def _find_button(blocks: list[dict[str, Any]], action_id: str) -> tuple[str, dict[str, Any]] | None:
    return next(((b, e) for b, e in _buttons(blocks) if e.get("action_id") == action_id), None)


def _button_action(block_id: str, button: dict[str, Any], value: str | None) -> dict[str, Any]:
    """The ``actions`` entry of a block_actions payload for a click on ``button``."""
    action = {
        "type": "button",
        "action_id": button.get("action_id"),
        "block_id": block_id,
        "text": button.get("text"),
        "action_ts": f"{time.time():.6f}",
    }
    chosen_value = value if value is not None else button.get("value")
    if chosen_value is not None:
        action["value"] = chosen_value
    if "style" in button:
        action["style"] = button["style"]
    return action


def _rich_text_block(text: str) -> dict[str, Any]:
    """The rich_text block Slack's clients attach to a typed message."""
    elements: list[dict[str, Any]] = []
    for index, part in enumerate(re.split(r"<@([A-Z0-9_]+)>", text)):
        if index % 2:
            elements.append({"type": "user", "user_id": part})
        elif part:
            elements.append({"type": "text", "text": part})
    return {
        "type": "rich_text",
        "block_id": uuid.uuid4().hex[:5],
        "elements": [{"type": "rich_text_section", "elements": elements}],
    }


def _file_object(upload: UploadedFile) -> dict[str, Any]:
    return {
        "id": upload.id,
        "name": upload.name,
        "title": upload.title,
        "size": len(upload.content),
        "mimetype": "text/plain",
        "filetype": "text",
    }


def _between(messages: list[dict[str, Any]], args: dict[str, Any]) -> list[dict[str, Any]]:
    """Messages within ``oldest``/``latest`` (exclusive unless ``inclusive``)."""
    inclusive = str(args.get("inclusive", "")).lower() in ("1", "true")
    oldest = float(args.get("oldest") or 0)
    latest = float(args.get("latest") or math.inf)
    if inclusive:
        return [m for m in messages if oldest <= float(m["ts"]) <= latest]
    return [m for m in messages if oldest < float(m["ts"]) < latest]


def _page(messages: list[dict[str, Any]], args: dict[str, Any]) -> dict[str, Any]:
    """One page of messages with Slack's cursor pagination."""
    start = int(args.get("cursor") or 0)
    limit = int(args.get("limit") or 100)
    page = messages[start : start + limit]
    next_cursor = str(start + limit) if start + limit < len(messages) else ""
    return {
        "messages": page,
        "has_more": bool(next_cursor),
        "response_metadata": {"next_cursor": next_cursor},
    }


def _user_name(user_id: str) -> str:
    """``U_ALICE`` → ``alice``: a readable name for a made-up user id."""
    return user_id.removeprefix("U").removeprefix("W").strip("_").lower() or user_id.lower()


def _describe(predicate: Callable[..., object]) -> str:
    name = getattr(predicate, "__name__", "")
    return "the condition" if name in ("", "<lambda>") else name

"""A scripted stand-in for the Anthropic Messages API, for the real Claude Code CLI.

Point the CLI at it with ``ANTHROPIC_BASE_URL=model.base_url`` and any API key::

    async with ScriptedModel() as model:
        model.script(
            [
                [tool("Write", {"file_path": "/abs/PLAN.md", "content": "# Plan"})],
                [text("Plan written.")],
            ],
            match="planning",
        )
        ...  # run Claude Code
        assert model.unexpected == []

A *script* is a list of turns. Each turn is what the model answers to one request of the
main conversation: a list of blocks (``text``, ``tool``, ``structured``) or a failure
(``overloaded``, ``rate_limited``). The CLI runs tool calls for real and sends the
results back in its next request, which gets the next turn.

How requests are told apart:

- ``POST /v1/messages`` with tools is a main-conversation request. The first one of a
  session (``X-Claude-Code-Session-Id``) takes the first unclaimed script whose ``match``
  appears in the system prompt or first user message (scripts without ``match`` come
  last); later requests of that session continue the same script, a resumed session too.
  A request that no script expects, or that comes after its script ran out, is answered
  with HTTP 500 and ``x-should-retry: false`` (so the CLI gives up at once) and recorded
  in ``model.unexpected``.
- ``POST /v1/messages`` without tools is a side request the CLI makes on its own: with
  ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC`` unset it asks for a session title (the
  prompt included, so ``match`` alone cannot tell it apart; JSON via
  ``output_config.format``). It gets a short answer, JSON that fits when asked for.
- ``POST /v1/messages/count_tokens`` gets a size estimate; anything else (the CLI's
  ``HEAD /api/hello`` probe, say) gets ``{}``.

What the CLI (2.1.x) does with the answers:

- Structured output (``--json-schema``, the SDK's ``output_format``) is a tool named
  ``StructuredOutput`` whose input is the answer. The run ends when the model calls it:
  ``[[structured({...})]]`` is a whole script. A text-only answer gets a nudge instead
  ("You MUST call the StructuredOutput tool"), as a further request.
- 529 and 429 are retried by the CLI itself, ``CLAUDE_CODE_MAX_RETRIES`` times (default
  10) with exponential backoff from about 0.5 s to about 40 s; ``retry-after`` is honoured
  on 429 but not on 529. A persistent overload takes three minutes with the defaults.

Every answer reports usage (about one token per four characters), so the CLI computes a
cost. ``model.requests`` holds every parsed ``/v1/messages`` body; ``model.log`` one line
per HTTP request of any kind.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = [
    "Failure",
    "LoggedRequest",
    "Pause",
    "Script",
    "ScriptedModel",
    "Text",
    "ToolUse",
    "Turn",
    "overloaded",
    "pause",
    "rate_limited",
    "structured",
    "text",
    "tool",
]

# The CLI implements `--json-schema` (the SDK's output_format) as a tool of this name that
# the model must call once, at the end, with the structured answer as its input.
STRUCTURED_OUTPUT_TOOL = "StructuredOutput"
SIDE_REPLY = "Scripted"


@dataclass(frozen=True)
class Text:
    """A text block of an assistant turn."""

    text: str


@dataclass(frozen=True)
class ToolUse:
    """A tool_use block of an assistant turn; the CLI runs the tool for real."""

    name: str
    input: Mapping[str, Any]


@dataclass(frozen=True)
class Failure:
    """An HTTP error answer in place of a turn, repeated ``times`` requests (None: forever)."""

    status: int
    error_type: str
    message: str
    retry_after: float | None = None
    times: int | None = 1


@dataclass(frozen=True)
class Pause:
    """Not a block: the model takes this long before it answers the turn (a slow model)."""

    seconds: float


Block = Text | ToolUse | Pause
Turn = Sequence[Block] | Failure


def text(value: str) -> Text:
    """A text block."""
    return Text(value)


def tool(name: str, input: Mapping[str, Any]) -> ToolUse:
    """A tool call, e.g. ``tool("Write", {"file_path": "/abs/x.py", "content": "..."})``."""
    return ToolUse(name, dict(input))


def structured(data: Mapping[str, Any]) -> ToolUse:
    """The structured answer of a step run with an output schema (the CLI's tool for it)."""
    return ToolUse(STRUCTURED_OUTPUT_TOOL, dict(data))


def pause(seconds: float) -> Pause:
    """Put in a turn to make the model answer it only after ``seconds``."""
    return Pause(seconds)


def overloaded(times: int | None = 1) -> Failure:
    """HTTP 529 ``overloaded_error``, for ``times`` requests in a row (None: for good)."""
    return Failure(529, "overloaded_error", "Overloaded", None, times)


def rate_limited(retry_after: float = 0, times: int | None = 1) -> Failure:
    """HTTP 429 ``rate_limit_error`` with a ``retry-after`` header (seconds)."""
    return Failure(
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit.",
        retry_after,
        times,
    )


@dataclass
class Script:
    """The turns of one scripted conversation and how far it has got."""

    turns: list[Turn]
    match: str | None = None
    session_id: str | None = None
    served: int = 0
    _position: int = 0
    _repeats: int = 0

    @property
    def exhausted(self) -> bool:
        """Whether every turn has been answered."""
        return self._position >= len(self.turns)

    def next_turn(self) -> Turn | None:
        """The answer to the next request, advancing the script; None when it ran out."""
        if self.exhausted:
            return None
        turn = self.turns[self._position]
        self.served += 1
        if isinstance(turn, Failure):
            self._repeats += 1
            if turn.times is not None and self._repeats >= turn.times:
                self._position += 1
                self._repeats = 0
            return turn
        self._position += 1
        return turn


@dataclass(frozen=True)
class LoggedRequest:
    """One HTTP request the model server saw, and how it was classified."""

    method: str
    path: str
    kind: str  # "main" | "side" | "count_tokens" | "other" | "unexpected"
    session_id: str | None
    body: Any = None


class ScriptedModel:
    """A local Anthropic Messages API that answers the Claude Code CLI from scripts."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.scripts: list[Script] = []
        self.requests: list[dict[str, Any]] = []  # every /v1/messages body
        self.log: list[LoggedRequest] = []  # every HTTP request
        self.unexpected: list[str] = []  # main-conversation requests no script expected
        self._runner: web.AppRunner | None = None
        self._port = 0

    # Lifecycle

    async def __aenter__(self) -> ScriptedModel:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A paused answer must not hold up shutdown: handlers still running get 1 s.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        """What ``ANTHROPIC_BASE_URL`` should be."""
        return f"http://{self.host}:{self._port}"

    # Surface for tests

    def script(self, turns: Sequence[Turn], *, match: str | None = None) -> Script:
        """Register a conversation; ``match`` must appear in its system prompt or first message."""
        registered = Script([_normalise_turn(turn) for turn in turns], match=match)
        self.scripts.append(registered)
        return registered

    def tool_results(self) -> list[dict[str, Any]]:
        """Every distinct tool_result block the CLI sent back, in order."""
        seen: dict[str, dict[str, Any]] = {}
        for body in self.requests:
            for message in body.get("messages", []):
                content = message.get("content")
                if message.get("role") != "user" or not isinstance(content, list):
                    continue
                for block in content:
                    if isinstance(block, dict) and block.get("type") == "tool_result":
                        seen.setdefault(str(block.get("tool_use_id")), block)
        return list(seen.values())

    # HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
        session_id = request.headers.get("X-Claude-Code-Session-Id")
        path = request.path

        if request.method == "POST" and path == "/v1/messages/count_tokens":
            self._record(request, "count_tokens", session_id, body)
            return web.json_response({"input_tokens": _estimate_tokens(body)})
        if request.method != "POST" or path != "/v1/messages" or not isinstance(body, dict):
            self._record(request, "other", session_id, body)
            return web.json_response({})

        self.requests.append(body)
        if not body.get("tools"):
            self._record(request, "side", session_id, body)
            return await self._answer(request, body, [Text(_side_reply(body))])

        script = self._script_for(body, session_id)
        turn = script.next_turn() if script is not None else None
        if turn is None:
            self._record(request, "unexpected", session_id, body)
            return self._unexpected(body, script)
        self._record(request, "main", session_id, body)
        if isinstance(turn, Failure):
            return _failure_response(turn)
        return await self._answer(request, body, turn)

    def _record(self, request: web.Request, kind: str, session_id: str | None, body: Any) -> None:
        self.log.append(LoggedRequest(request.method, request.path_qs, kind, session_id, body))

    def _script_for(self, body: dict[str, Any], session_id: str | None) -> Script | None:
        if session_id is not None:
            for bound in self.scripts:
                if bound.session_id == session_id:
                    return bound
        haystack = _system_text(body) + "\n" + _first_user_text(body)
        unclaimed = [s for s in self.scripts if s.session_id is None and not s.exhausted]
        candidates = [s for s in unclaimed if s.match is not None and s.match in haystack]
        candidates += [s for s in unclaimed if s.match is None]
        if not candidates:
            return None
        chosen = candidates[0]
        chosen.session_id = session_id
        return chosen

    def _unexpected(self, body: dict[str, Any], script: Script | None) -> web.Response:
        prompt = _prompt_text(body)[:200]
        if script is None:
            reason = "no script expects this conversation"
        else:
            reason = f"script (match={script.match!r}) ran out after {len(script.turns)} turns"
        description = f"{reason}; its prompt: {prompt!r}"
        self.unexpected.append(description)
        payload = {"type": "error", "error": {"type": "api_error", "message": description}}
        # x-should-retry keeps the CLI from retrying a request that will fail again.
        return web.json_response(payload, status=500, headers={"x-should-retry": "false"})

    async def _answer(
        self, request: web.Request, body: dict[str, Any], blocks: Sequence[Block]
    ) -> web.StreamResponse:
        delay = sum(block.seconds for block in blocks if isinstance(block, Pause))
        if delay:
            await asyncio.sleep(delay)
        answered = [block for block in blocks if not isinstance(block, Pause)]
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        model = str(body.get("model", "claude-scripted"))
        input_tokens = _estimate_tokens(body)
        content = [_content_block(block) for block in answered]
        output_tokens = max(1, len(json.dumps(content)) // 4)
        stop_reason = "tool_use" if any(isinstance(b, ToolUse) for b in answered) else "end_turn"
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
                }
            )
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for event in _stream_events(message_id, model, content, stop_reason, input_tokens):
            await response.write(_sse(event, output_tokens))
        await response.write_eof()
        return response


def _normalise_turn(turn: Turn) -> Turn:
    if isinstance(turn, Failure):
        return turn
    blocks = list(turn)
    if len(blocks) == 1 and isinstance(blocks[0], Failure):
        return blocks[0]
    for block in blocks:
        if not isinstance(block, Text | ToolUse | Pause):
            raise TypeError(
                f"a turn holds text(), tool(), structured() or pause() blocks, not {block!r}"
            )
    return blocks


def _content_block(block: Text | ToolUse) -> dict[str, Any]:
    if isinstance(block, Text):
        return {"type": "text", "text": block.text}
    return {
        "type": "tool_use",
        "id": f"toolu_{uuid.uuid4().hex[:24]}",
        "name": block.name,
        "input": dict(block.input),
    }


def _stream_events(
    message_id: str,
    model: str,
    content: list[dict[str, Any]],
    stop_reason: str,
    input_tokens: int,
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1},
            },
        }
    ]
    for index, block in enumerate(content):
        start: dict[str, Any]
        delta: dict[str, Any]
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        events += [
            {"type": "content_block_start", "index": index, "content_block": start},
            {"type": "content_block_delta", "index": index, "delta": delta},
            {"type": "content_block_stop", "index": index},
        ]
    events += [
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": 0},  # filled in by _sse
        },
        {"type": "message_stop"},
    ]
    return events


def _sse(event: dict[str, Any], output_tokens: int) -> bytes:
    if event["type"] == "message_delta":
        event = {**event, "usage": {"output_tokens": output_tokens}}
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _failure_response(failure: Failure) -> web.Response:
    headers = {}
    if failure.retry_after is not None:
        headers["retry-after"] = f"{failure.retry_after:g}"
    payload = {"type": "error", "error": {"type": failure.error_type, "message": failure.message}}
    return web.json_response(payload, status=failure.status, headers=headers)


def _side_reply(body: dict[str, Any]) -> str:
    """A short answer; JSON that fits the schema when the request asks for one (titles do)."""
    output_format = (body.get("output_config") or {}).get("format") or {}
    if output_format.get("type") == "json_schema":
        return json.dumps(_sample(output_format.get("schema") or {}))
    return SIDE_REPLY


def _sample(schema: Mapping[str, Any]) -> Any:
    """The smallest value that fits a simple JSON schema."""
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: _sample(properties[name]) for name in schema.get("required", [])}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return SIDE_REPLY


def _estimate_tokens(body: Any) -> int:
    return max(1, len(json.dumps(body)) // 4)


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)]


def _system_text(body: dict[str, Any]) -> str:
    return "\n".join(_texts(body.get("system")))


def _first_user_text(body: dict[str, Any]) -> str:
    for message in body.get("messages", []):
        if message.get("role") == "user":
            return "\n".join(_texts(message.get("content")))
    return ""


def _prompt_text(body: dict[str, Any]) -> str:
    """The prompt itself: the first user message without the CLI's system reminders."""
    for message in body.get("messages", []):
        if message.get("role") == "user":
            texts = [t for t in _texts(message.get("content")) if not t.startswith("<system-")]
            return "\n".join(texts).strip()
    return ""

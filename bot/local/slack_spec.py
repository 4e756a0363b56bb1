"""What Slack accepts: Web API methods, their arguments, and the Block Kit limits.

The method list comes from Slack's published OpenAPI description
(``web-api-openapi-v2.json``). It dates from 2021, so the methods and arguments
added since are listed here by hand (``ADDED_METHODS``, ``ADDED_ARGUMENTS``)
instead of switching the check off.

Surface:

- ``WebApiSpec.load(path=None) -> WebApiSpec``: read the description
  (``path``, else ``$FIXBOT_SLACK_SPEC``, else the copy vendored in ``bot/local/slack_api/``).
- ``WebApiSpec.check(method, arguments) -> SpecProblem | None``: why Slack would
  refuse the call (``unknown_method`` or ``invalid_arguments``), or None.
- ``check_blocks(blocks, *, limit) -> list[str]``: Block Kit rules Slack enforces,
  one sentence per broken rule.
- ``MESSAGE_BLOCK_LIMIT``, ``VIEW_BLOCK_LIMIT``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPEC_FILE_NAME = "web-api-openapi-v2.json"
SPEC_ENV_VARIABLE = "FIXBOT_SLACK_SPEC"
VENDORED_SPEC = Path(__file__).resolve().parent / "slack_api" / SPEC_FILE_NAME

# Methods Slack added after the 2021 description, with the arguments they take.
ADDED_METHODS: dict[str, frozenset[str]] = {
    "apps.connections.open": frozenset(),
    "files.getUploadURLExternal": frozenset({"filename", "length", "alt_txt", "snippet_type"}),
    "files.completeUploadExternal": frozenset(
        {"files", "channel_id", "channels", "initial_comment", "thread_ts", "blocks"}
    ),
    "chat.startStream": frozenset(
        {
            "channel",
            "thread_ts",
            "markdown_text",
            "recipient_team_id",
            "recipient_user_id",
            "chunks",
            "task_display_mode",
            "icon_emoji",
            "icon_url",
            "username",
        }
    ),
    "chat.appendStream": frozenset({"channel", "ts", "markdown_text", "chunks"}),
    "chat.stopStream": frozenset(
        {"channel", "ts", "markdown_text", "blocks", "metadata", "chunks", "session_status"}
    ),
    "assistant.threads.setStatus": frozenset(
        {"channel_id", "thread_ts", "status", "loading_messages", "icon_emoji", "icon_url"}
    ),
}

# Arguments Slack added to methods the 2021 description already has.
ADDED_ARGUMENTS: dict[str, frozenset[str]] = {
    "chat.postMessage": frozenset({"metadata", "markdown_text", "container_id"}),
    "chat.update": frozenset({"metadata", "markdown_text", "file_ids", "reply_broadcast"}),
    "chat.postEphemeral": frozenset({"markdown_text"}),
    "conversations.history": frozenset({"include_all_metadata"}),
    "conversations.replies": frozenset({"include_all_metadata"}),
}

# Accepted by every method: the token, and the team_id that slack_sdk adds to every call
# when its client has one (Bolt's per-request client does; org-wide apps need it).
ALWAYS_ALLOWED = frozenset({"token", "team_id"})

MESSAGE_BLOCK_LIMIT = 50
VIEW_BLOCK_LIMIT = 100
SECTION_TEXT_LIMIT = 3000
SECTION_FIELD_LIMIT = 2000
SECTION_FIELDS_MAX = 10
HEADER_TEXT_LIMIT = 150
BUTTON_TEXT_LIMIT = 75
BUTTON_VALUE_LIMIT = 2000
ID_LIMIT = 255  # block_id and action_id
ACTIONS_ELEMENTS_MAX = 25
CONTEXT_ELEMENTS_MAX = 10


@dataclass(frozen=True)
class SpecProblem:
    """Why Slack would refuse a call: the error code it answers and a sentence."""

    error: str
    detail: str


@dataclass(frozen=True)
class MethodSpec:
    """One Web API method: every argument it knows, and those it requires."""

    name: str
    arguments: frozenset[str]
    required: frozenset[str]


class WebApiSpec:
    """The Web API methods Slack has, read from its published description."""

    def __init__(self, methods: Mapping[str, MethodSpec]) -> None:
        self.methods = dict(methods)

    @classmethod
    def load(cls, path: str | Path | None = None) -> WebApiSpec:
        """Read the OpenAPI description and add the methods and arguments listed above; each
        file is read once per process (a megabyte of JSON, and the tests make many Slacks)."""
        return _read(Path(path) if path is not None else default_spec_path())

    def check(self, method: str, arguments: Iterable[str]) -> SpecProblem | None:
        """Say why Slack would refuse ``method`` called with these argument names, if it would."""
        known = self.methods.get(method)
        if known is None:
            return SpecProblem("unknown_method", f"Slack has no Web API method {method!r}")
        given = set(arguments) - ALWAYS_ALLOWED
        unknown = sorted(given - known.arguments)
        if unknown:
            return SpecProblem(
                "invalid_arguments",
                f"{method} does not take {', '.join(unknown)}; "
                f"it takes {', '.join(sorted(known.arguments - ALWAYS_ALLOWED)) or 'nothing'}",
            )
        missing = sorted(known.required - given)
        if missing:
            return SpecProblem(
                "invalid_arguments", f"{method} is missing required {', '.join(missing)}"
            )
        return None


@functools.cache
def _read(spec_path: Path) -> WebApiSpec:
    document = json.loads(spec_path.read_text(encoding="utf-8"))
    methods: dict[str, MethodSpec] = {}
    for route, operations in document["paths"].items():
        name = route.lstrip("/")
        arguments: set[str] = set()
        required: set[str] = set()
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                arguments.add(parameter["name"])
                if parameter.get("required") and parameter["name"] != "token":
                    required.add(parameter["name"])
        arguments |= ADDED_ARGUMENTS.get(name, frozenset())
        methods[name] = MethodSpec(name, frozenset(arguments), frozenset(required))
    for name, added in ADDED_METHODS.items():
        methods.setdefault(name, MethodSpec(name, added, frozenset()))
    return WebApiSpec(methods)


def default_spec_path() -> Path:
    """``$FIXBOT_SLACK_SPEC`` if set, else the copy vendored beside this module."""
    from_environment = os.environ.get(SPEC_ENV_VARIABLE)
    if from_environment:
        return Path(from_environment)
    return VENDORED_SPEC


def check_blocks(blocks: object, *, limit: int) -> list[str]:
    """Block Kit rules Slack enforces; ``limit`` is 50 for a message and 100 for a view."""
    if not isinstance(blocks, list):
        return ["blocks must be a list of block objects"]
    problems: list[str] = []
    if len(blocks) > limit:
        problems.append(f"{len(blocks)} blocks, more than the {limit} Slack allows")
    block_ids: set[str] = set()
    for index, block in enumerate(blocks):
        where = f"block {index}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            problems.append(f"{where} is not an object with a type")
            continue
        block_id = block.get("block_id")
        if block_id is not None:
            if block_id in block_ids:
                problems.append(f"{where}: block_id {block_id!r} is used twice")
            if len(str(block_id)) > ID_LIMIT:
                problems.append(f"{where}: block_id is longer than {ID_LIMIT} characters")
            block_ids.add(block_id)
        problems.extend(_check_block(block, where))
        action_ids: set[str] = set()  # Slack wants them unique within their block
        for element in _interactive_elements(block):
            problems.extend(_check_element(element, where, action_ids))
    return problems


def _check_block(block: dict[str, Any], where: str) -> list[str]:
    problems: list[str] = []
    kind = block["type"]
    if kind == "section":
        if "text" not in block and "fields" not in block:
            problems.append(f"{where}: a section needs text or fields")
        text = _text_of(block.get("text"))
        if len(text) > SECTION_TEXT_LIMIT:
            problems.append(
                f"{where}: section text is {len(text)} characters, more than {SECTION_TEXT_LIMIT}"
            )
        fields = block.get("fields") or []
        if len(fields) > SECTION_FIELDS_MAX:
            problems.append(
                f"{where}: {len(fields)} section fields, more than {SECTION_FIELDS_MAX}"
            )
        for field in fields:
            if len(_text_of(field)) > SECTION_FIELD_LIMIT:
                problems.append(f"{where}: a section field is longer than {SECTION_FIELD_LIMIT}")
    elif kind == "header":
        if len(_text_of(block.get("text"))) > HEADER_TEXT_LIMIT:
            problems.append(f"{where}: header text is longer than {HEADER_TEXT_LIMIT} characters")
    elif kind == "actions":
        if len(block.get("elements") or []) > ACTIONS_ELEMENTS_MAX:
            problems.append(f"{where}: more than {ACTIONS_ELEMENTS_MAX} elements in actions")
    elif kind == "context":
        if len(block.get("elements") or []) > CONTEXT_ELEMENTS_MAX:
            problems.append(f"{where}: more than {CONTEXT_ELEMENTS_MAX} elements in context")
    return problems


def _check_element(element: dict[str, Any], where: str, action_ids: set[str]) -> list[str]:
    problems: list[str] = []
    action_id = element.get("action_id")
    if action_id is not None:
        if action_id in action_ids:
            problems.append(f"{where}: action_id {action_id!r} is used twice in the block")
        if len(str(action_id)) > ID_LIMIT:
            problems.append(f"{where}: action_id is longer than {ID_LIMIT} characters")
        action_ids.add(action_id)
    if element.get("type") == "button":
        label = _text_of(element.get("text"))
        if len(label) > BUTTON_TEXT_LIMIT:
            problems.append(
                f"{where}: button text {label[:20]!r}… is {len(label)} characters, "
                f"more than {BUTTON_TEXT_LIMIT}"
            )
        if len(str(element.get("value", ""))) > BUTTON_VALUE_LIMIT:
            problems.append(f"{where}: button value is longer than {BUTTON_VALUE_LIMIT}")
    return problems


def _interactive_elements(block: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Elements that carry an action_id: accessories and actions/input elements."""
    accessory = block.get("accessory")
    if isinstance(accessory, dict):
        yield accessory
    element = block.get("element")
    if isinstance(element, dict):
        yield element
    if block["type"] == "actions":
        for item in block.get("elements") or []:
            if isinstance(item, dict):
                yield item


def _text_of(text_object: object) -> str:
    if isinstance(text_object, dict):
        return str(text_object.get("text", ""))
    return "" if text_object is None else str(text_object)

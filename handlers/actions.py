"""Buttons: Approve, Reject, Retry, Cancel, Approve test changes.

A refused click gets a polite ephemeral answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot.errors import Refused
from bot.tasks import Decision, Workflow
from handlers.answers import answering, clicked_message_ts


def register(app: AsyncApp, workflow: Workflow) -> None:
    verbs: dict[str, Callable[[Decision], Awaitable[Any]]] = {
        "approve": workflow.approve,
        "reject": workflow.reject,
        "retry": workflow.retry,
        "cancel": workflow.cancel,
        "approve_test_changes": workflow.approve_test_changes,
    }
    for action_id, verb in verbs.items():
        app.action(action_id)(_button(verb))


def _button(verb: Callable[[Decision], Awaitable[Any]]) -> Callable[..., Awaitable[None]]:
    async def on_click(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        task_id, _, version = str(body["actions"][0].get("value", "")).partition(":")
        async with answering(respond):
            if not task_id.isdigit() or not (version.isdigit() or version == ""):
                raise Refused("That button does not belong to a task I know.")
            decision = Decision(
                task_id=int(task_id),
                user=body["user"]["id"],
                plan_version=int(version) if version else None,
                plan_ts=clicked_message_ts(body) if version else None,
            )
            await verb(decision)

    return on_click

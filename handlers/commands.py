"""`/fix REF`: acknowledge at once, parse, start a task or say what was wrong."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot.errors import FixbotError
from bot.refs import parse_reference
from bot.workflow import Workflow


def register(app: AsyncApp, workflow: Workflow) -> None:
    @app.command("/fix")
    async def fix(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        try:
            ref = parse_reference(command.get("text", ""), workflow.settings)
            await workflow.create_task(ref, channel=command["channel_id"], user=command["user_id"])
        except FixbotError as error:
            await respond(text=str(error), response_type="ephemeral")

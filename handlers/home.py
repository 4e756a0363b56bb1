"""The App Home tab: the dashboard, published when someone opens it or turns its page."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot.tasks import Workflow
from handlers.answers import answering


def register(app: AsyncApp, workflow: Workflow) -> None:
    @app.event("app_home_opened")
    async def home_opened(event: dict[str, Any]) -> None:
        if event.get("tab") == "home":
            await workflow.publish_home(event["user"])

    @app.action("home_page")
    async def home_page(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        value = str(body["actions"][0].get("value", "0"))
        async with answering(respond):
            await workflow.publish_home(body["user"]["id"], int(value) if value.isdigit() else 0)

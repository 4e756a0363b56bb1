"""The App Home tab: the dashboard, published when someone opens it."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp

from bot.workflow import Workflow


def register(app: AsyncApp, workflow: Workflow) -> None:
    @app.event("app_home_opened")
    async def home_opened(event: dict[str, Any]) -> None:
        if event.get("tab") == "home":
            await workflow.publish_home(event["user"])

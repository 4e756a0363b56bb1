"""The local Slack as `fixbot local` serves it: mounted under /local, watched, App Home clicks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from fakes.slack import LocalSlack
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.web.async_client import AsyncWebClient
from test_local_slack import connect_acking

from bot.http import make_http_app


def approve_block(value: str) -> dict[str, Any]:
    button = {"type": "plain_text", "text": "Approve"}
    return {
        "type": "actions",
        "elements": [{"type": "button", "text": button, "action_id": "approve", "value": value}],
    }


# Two plans awaiting approval: one Approve button each, told apart by value.
HOME = {"type": "home", "blocks": [approve_block("1:1"), approve_block("2:1")]}


async def ready() -> dict[str, bool]:
    return {"ok": True}


@pytest.fixture
async def mounted() -> AsyncIterator[LocalSlack]:
    """A LocalSlack mounted under /local of Fixbot's own HTTP application."""
    slack = LocalSlack()
    runner = web.AppRunner(make_http_app(ready, mounts={"/local": slack.make_app()}))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    slack.public_url = f"http://127.0.0.1:{runner.addresses[0][1]}/local"
    try:
        yield slack
    finally:
        await slack.close()
        await runner.cleanup()


async def test_a_mounted_workspace_serves_web_api_and_socket_mode_under_its_prefix(
    mounted: LocalSlack,
) -> None:
    web_client = AsyncWebClient(token=mounted.bot_token, base_url=mounted.api_url)
    socket = SocketModeClient(app_token=mounted.app_token, web_client=web_client)
    try:
        received = await connect_acking(mounted, socket)
        assert mounted.api_url.endswith("/local/api/")
        await mounted.slash_command("SHOP-1")
        await web_client.files_upload_v2(
            channel="C_GENERAL", filename="PLAN.md", content="# Plan", request_file_info=False
        )
    finally:
        await socket.close()
    assert [request.type for request in received] == ["slash_commands"]
    assert [upload.text for upload in mounted.files.values()] == ["# Plan"]


async def test_next_change_wakes_on_a_message_and_home_buttons_click_by_value(
    mounted: LocalSlack,
) -> None:
    web_client = AsyncWebClient(token=mounted.bot_token, base_url=mounted.api_url)
    seen = mounted.version
    waiting = asyncio.create_task(mounted.next_change(seen))
    await web_client.chat_postMessage(channel="C_GENERAL", text="hello")
    assert await asyncio.wait_for(waiting, 60) > seen

    await web_client.views_publish(user_id="U_BEN", view=HOME)
    socket = SocketModeClient(app_token=mounted.app_token, web_client=web_client)
    try:
        received = await connect_acking(mounted, socket)
        await mounted.click_home_button("approve", user="U_BEN", value="2:1")
    finally:
        await socket.close()
    [click] = received
    assert click.payload["container"]["type"] == "view"
    assert click.payload["actions"][0]["value"] == "2:1"
    assert "response_url" not in click.payload
    assert mounted.violations == []

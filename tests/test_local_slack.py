"""The local Slack, driven by the real slack_sdk and slack_bolt clients over the network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from fakes.slack import LocalSlack
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

PLAN_BLOCKS: list[dict[str, Any]] = [
    {"type": "section", "text": {"type": "mrkdwn", "text": "*Plan*: fix the null check"}},
    {
        "type": "actions",
        "block_id": "plan_actions",
        "elements": [
            {
                "type": "button",
                "text": {"type": "plain_text", "text": "Approve"},
                "action_id": "approve",
                "value": "task-1",
                "style": "primary",
            },
            {
                "type": "button",
                "text": {"type": "plain_text", "text": "Reject"},
                "action_id": "reject",
                "value": "task-1",
            },
        ],
    },
]


@pytest.fixture
async def slack() -> AsyncIterator[LocalSlack]:
    async with LocalSlack(ack_timeout=0.5) as local_slack:
        yield local_slack
        assert not local_slack.violations, [str(v) for v in local_slack.violations]


@pytest.fixture
def web(slack: LocalSlack) -> AsyncWebClient:
    return AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)


@pytest.fixture
async def socket_client(slack: LocalSlack, web: AsyncWebClient) -> AsyncIterator[SocketModeClient]:
    client = SocketModeClient(app_token=slack.app_token, web_client=web)
    yield client
    await client.close()


Listener = Callable[[AsyncBaseSocketModeClient, SocketModeRequest], Awaitable[None]]


def acking(received: list[SocketModeRequest]) -> Listener:
    """A Socket Mode listener that keeps each request and acknowledges it at once."""

    async def listener(client: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
        received.append(request)
        await client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))

    return listener


async def connect_acking(
    slack: LocalSlack, socket_client: SocketModeClient
) -> list[SocketModeRequest]:
    """Connect `socket_client` with an `acking` listener: what it receives."""
    received: list[SocketModeRequest] = []
    socket_client.socket_mode_request_listeners.append(acking(received))
    await socket_client.connect()
    await slack.wait_connected()
    return received


# ---------------------------------------------------------------------- Web API


async def test_auth_test_names_the_bot(slack: LocalSlack, web: AsyncWebClient) -> None:
    response = await web.auth_test()

    assert response["user_id"] == "UFIXBOT"
    assert response["bot_id"] == "BFIXBOT"
    assert response["team_id"] == slack.team_id


async def test_post_reply_and_update_make_a_thread(slack: LocalSlack, web: AsyncWebClient) -> None:
    parent = await web.chat_postMessage(channel="C_GENERAL", text="Fixing SHOP-1")
    reply = await web.chat_postMessage(
        channel="C_GENERAL", thread_ts=parent["ts"], text="plan", blocks=PLAN_BLOCKS
    )
    await web.chat_update(channel="C_GENERAL", ts=reply["ts"], text="plan (superseded)", blocks=[])

    assert float(reply["ts"]) > float(parent["ts"])
    thread = slack.thread("C_GENERAL", parent["ts"])
    assert [m["text"] for m in thread] == ["Fixing SHOP-1", "plan (superseded)"]
    assert thread[0]["reply_count"] == 1
    assert thread[1]["bot_id"] == "BFIXBOT" and thread[1]["user"] == "UFIXBOT"
    assert [m["text"] for m in slack.messages("C_GENERAL")] == ["Fixing SHOP-1"]
    replies = await web.conversations_replies(channel="C_GENERAL", ts=parent["ts"])
    assert [m["ts"] for m in replies["messages"]] == [parent["ts"], reply["ts"]]


async def test_unknown_method_is_refused_and_recorded(
    slack: LocalSlack, web: AsyncWebClient
) -> None:
    with pytest.raises(SlackApiError) as refused:
        await web.api_call("chat.postMesage", json={"channel": "C_GENERAL", "text": "hi"})

    assert refused.value.response["error"] == "unknown_method"
    assert [v.error for v in slack.violations] == ["unknown_method"]
    slack.violations.clear()


async def test_unknown_argument_is_refused_and_recorded(
    slack: LocalSlack, web: AsyncWebClient
) -> None:
    with pytest.raises(SlackApiError) as refused:
        await web.chat_postMessage(channel="C_GENERAL", text="hi", thread="123")

    assert refused.value.response["error"] == "invalid_arguments"
    assert "thread" in slack.violations[0].detail
    slack.violations.clear()


async def test_arguments_added_since_2021_are_accepted(
    slack: LocalSlack, web: AsyncWebClient
) -> None:
    metadata = {"event_type": "fixbot_task", "event_payload": {"task_id": "t1"}}
    posted = await web.chat_postMessage(channel="C_GENERAL", text="hi", metadata=metadata)

    assert slack.messages("C_GENERAL")[0]["metadata"] == metadata
    assert posted["message"]["metadata"] == metadata


async def test_wrong_token_is_invalid_auth(slack: LocalSlack) -> None:
    stranger = AsyncWebClient(token="xoxb-wrong", base_url=slack.api_url)

    with pytest.raises(SlackApiError) as refused:
        await stranger.auth_test()

    assert refused.value.response["error"] == "invalid_auth"


async def test_block_kit_limits_are_enforced(slack: LocalSlack, web: AsyncWebClient) -> None:
    too_many = [{"type": "divider"}] * 51
    long_button = [
        {
            "type": "actions",
            "elements": [
                {"type": "button", "text": {"type": "plain_text", "text": "x" * 76}},
                {"type": "button", "text": {"type": "plain_text", "text": "a"}, "action_id": "a"},
                {"type": "button", "text": {"type": "plain_text", "text": "b"}, "action_id": "a"},
            ],
        }
    ]

    for blocks in (too_many, long_button):
        with pytest.raises(SlackApiError) as refused:
            await web.chat_postMessage(channel="C_GENERAL", text="x", blocks=blocks)
        assert refused.value.response["error"] == "invalid_blocks"

    details = " ".join(v.detail for v in slack.violations)
    assert "51 blocks" in details and "76 characters" in details and "used twice" in details
    assert slack.messages("C_GENERAL") == []
    slack.violations.clear()


async def test_forced_429_is_honoured_by_the_retry_handler(slack: LocalSlack) -> None:
    web = AsyncWebClient(
        token=slack.bot_token,
        base_url=slack.api_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
    )
    slack.force_429("chat.postMessage", retry_after=1, times=1)

    started = asyncio.get_running_loop().time()
    await web.chat_postMessage(channel="C_GENERAL", text="after a pause")

    assert asyncio.get_running_loop().time() - started >= 1
    assert slack.call_counts()["chat.postMessage"] == 2
    assert len(slack.messages("C_GENERAL")) == 1


async def test_published_tier_limits_calls(slack: LocalSlack, web: AsyncWebClient) -> None:
    slack.rate_limit("chat.update", per_minute=2)
    posted = await web.chat_postMessage(channel="C_GENERAL", text="v0")
    for version in ("v1", "v2"):
        await web.chat_update(channel="C_GENERAL", ts=posted["ts"], text=version)

    with pytest.raises(SlackApiError) as refused:
        await web.chat_update(channel="C_GENERAL", ts=posted["ts"], text="v3")

    assert refused.value.response.status_code == 429
    assert int(refused.value.response.headers["Retry-After"]) >= 1


async def test_file_upload_is_shared_in_the_thread(slack: LocalSlack, web: AsyncWebClient) -> None:
    parent = await web.chat_postMessage(channel="C_GENERAL", text="task")

    await web.files_upload_v2(
        channel="C_GENERAL",
        thread_ts=parent["ts"],
        content="diff --git a/x b/x",
        filename="fix.diff",
        title="The diff",
    )

    [upload] = slack.files.values()
    assert upload.text == "diff --git a/x b/x" and upload.title == "The diff"
    shared = slack.thread("C_GENERAL", parent["ts"])[-1]
    assert [f["id"] for f in shared["files"]] == [upload.id]


async def test_views_publish_sets_the_home_tab(slack: LocalSlack, web: AsyncWebClient) -> None:
    view = {
        "type": "home",
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}],
    }

    await web.views_publish(user_id="U_ALICE", view=view)

    home = slack.home_view("U_ALICE")
    assert home is not None and home["blocks"][0]["text"]["text"] == "hi"
    assert slack.home_view("U_BOB") is None


# ---------------------------------------------------------------------- Socket Mode


async def test_socket_client_receives_a_slash_command_and_acks(
    slack: LocalSlack, socket_client: SocketModeClient
) -> None:
    received = await connect_acking(slack, socket_client)

    ack = await slack.slash_command("SHOP-1", user="U_ALICE")

    [request] = received
    assert request.type == "slash_commands"
    assert request.payload["command"] == "/fix" and request.payload["text"] == "SHOP-1"
    assert request.payload["response_url"].startswith(slack.base_url + "/response/")
    assert ack.envelope_id == request.envelope_id and ack.retry_attempt == 0
    assert ack.latency_s < 1


async def test_unacknowledged_envelope_is_delivered_again(
    slack: LocalSlack, socket_client: SocketModeClient
) -> None:
    received: list[SocketModeRequest] = []

    async def ack_only_retries(
        client: AsyncBaseSocketModeClient, request: SocketModeRequest
    ) -> None:
        received.append(request)
        if request.retry_attempt:
            await client.send_socket_mode_response({"envelope_id": request.envelope_id})

    socket_client.socket_mode_request_listeners.append(ack_only_retries)
    await socket_client.connect()

    ack = await slack.slash_command("SHOP-2")

    assert [(r.retry_attempt, r.retry_reason) for r in received] == [(0, ""), (1, "timeout")]
    assert received[0].envelope_id == received[1].envelope_id
    assert ack.retry_attempt == 1 and ack.latency_s >= slack.ack_timeout


async def test_refresh_requested_makes_the_client_reconnect(
    slack: LocalSlack, socket_client: SocketModeClient
) -> None:
    received = await connect_acking(slack, socket_client)

    await slack.request_refresh()
    await slack.slash_command("after refresh")

    assert slack.connections_opened == 2 and slack.connected == 1
    assert slack.call_counts()["apps.connections.open"] == 2
    assert [r.payload["text"] for r in received] == ["after refresh"]


async def test_envelopes_are_shared_between_replicas(
    slack: LocalSlack, web: AsyncWebClient
) -> None:
    received: dict[str, list[SocketModeRequest]] = {"a": [], "b": []}
    clients = [SocketModeClient(app_token=slack.app_token, web_client=web) for _ in received]
    try:
        for client, name in zip(clients, received, strict=True):
            client.socket_mode_request_listeners.append(acking(received[name]))
            await client.connect()
        await slack.wait_connected(2)

        for n in range(4):
            await slack.slash_command(f"SHOP-{n}")
    finally:
        for client in clients:
            await client.close()

    assert [len(requests) for requests in received.values()] == [2, 2]


async def test_human_messages_arrive_as_events(
    slack: LocalSlack, socket_client: SocketModeClient, web: AsyncWebClient
) -> None:
    received = await connect_acking(slack, socket_client)
    parent = await web.chat_postMessage(channel="C_GENERAL", text="plan")

    reply_ts = await slack.reply_in_thread("C_GENERAL", parent["ts"], "use a guard clause")
    await slack.mention("C_GENERAL", "status?", user="U_BOB")
    await slack.wait_for(lambda: len(slack.acks) == 3)

    events = [r.payload["event"] for r in received]
    assert [e["type"] for e in events] == ["message", "message", "app_mention"]
    assert events[0]["thread_ts"] == parent["ts"] and events[0]["ts"] == reply_ts
    assert events[2]["text"] == "<@UFIXBOT> status?" and events[2]["user"] == "U_BOB"
    assert all(r.type == "events_api" and r.payload["event_id"] for r in received)


# ---------------------------------------------------------------------- Bolt


async def test_bolt_app_acks_a_command_and_answers_a_button(slack: LocalSlack) -> None:
    web = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    app = AsyncApp(client=web)

    @app.command("/fix")
    async def fix(ack: Any, command: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        await client.chat_postMessage(
            channel=command["channel_id"], text=f"Planning {command['text']}", blocks=PLAN_BLOCKS
        )

    @app.action("approve")
    async def approve(ack: Any, respond: Any, body: dict[str, Any]) -> None:
        await ack()
        await respond(text=f"approved {body['actions'][0]['value']}", replace_original=False)

    handler = AsyncSocketModeHandler(app, slack.app_token)
    await handler.connect_async()
    try:
        ack = await slack.slash_command("SHOP-1")
        [plan] = await slack.wait_for(lambda: slack.messages("C_GENERAL"))
        await slack.click_button("C_GENERAL", plan["ts"], "approve", user="U_ALICE")
        ephemeral = await slack.wait_for(lambda: slack.ephemerals("U_ALICE"))
    finally:
        await handler.close_async()

    assert ack.latency_s < 3
    assert plan["text"] == "Planning SHOP-1"
    assert ephemeral[0]["text"] == "approved task-1"


async def test_click_button_fails_clearly_without_the_button(
    slack: LocalSlack, web: AsyncWebClient
) -> None:
    posted = await web.chat_postMessage(channel="C_GENERAL", text="plan", blocks=PLAN_BLOCKS)

    with pytest.raises(AssertionError, match=r"no button 'merge'.*'approve', 'reject'"):
        await slack.click_button("C_GENERAL", posted["ts"], "merge")


async def test_every_method_fixbot_may_call_passes_the_spec_check(
    slack: LocalSlack, web: AsyncWebClient
) -> None:
    parent = await web.chat_postMessage(channel="C_GENERAL", text="parent", unfurl_links=False)
    ts = parent["ts"]

    await web.conversations_join(channel="C_GENERAL")
    info = await web.conversations_info(channel="C_GENERAL")
    members = await web.conversations_members(channel="C_GENERAL")
    history = await web.conversations_history(channel="C_GENERAL", limit=10)
    user = await web.users_info(user="U_ALICE")
    team = await web.team_info()
    link = await web.chat_getPermalink(channel="C_GENERAL", message_ts=ts)
    await web.reactions_add(channel="C_GENERAL", name="eyes", timestamp=ts)
    await web.chat_postEphemeral(channel="C_GENERAL", user="U_BOB", text="only you", thread_ts=ts)
    with pytest.warns(UserWarning, match="files_upload_v2"):  # slack_sdk discourages the old form
        await web.files_upload(channels="C_GENERAL", content="log", filename="log.txt")
    await web.chat_delete(channel="C_GENERAL", ts=ts)

    assert info["channel"]["is_member"] and "UFIXBOT" in members["members"]
    assert [m["ts"] for m in history["messages"]] == [ts]
    assert user["user"]["name"] == "alice" and team["team"]["id"] == slack.team_id
    assert link["permalink"].endswith(ts.replace(".", ""))
    assert slack.ephemerals("U_BOB")[0]["text"] == "only you"
    assert [m.get("files", [{}])[0].get("name") for m in slack.messages("C_GENERAL")] == ["log.txt"]


async def test_response_url_in_channel_posts_in_the_channel(
    slack: LocalSlack, socket_client: SocketModeClient
) -> None:
    received = await connect_acking(slack, socket_client)
    await slack.slash_command("SHOP-1")

    async with aiohttp.ClientSession() as session:
        response_url = received[0].payload["response_url"]
        reply = {"response_type": "in_channel", "text": "On it"}
        async with session.post(response_url, json=reply) as answered:
            assert answered.status == 200

    assert [m["text"] for m in slack.messages("C_GENERAL")] == ["On it"]

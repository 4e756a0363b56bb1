"""Messages: Sentry alerts in alert channels, replies in task threads, `@fixbot` mentions.

Fixbot's own messages never trigger anything; other bots' messages only count when they
are recognised Sentry alerts.
"""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext

from bot.conversation import Conversation
from bot.errors import Refused
from handlers.answers import answering, clicked_message_ts
from repos.errors import FixbotError

HUMAN_SUBTYPES = {None, "thread_broadcast"}


def register(app: AsyncApp, conversation: Conversation) -> None:
    @app.event("message")
    async def on_message(event: dict[str, Any], context: AsyncBoltContext) -> None:
        subtype = event.get("subtype")
        if subtype not in HUMAN_SUBTYPES and subtype != "bot_message":
            return  # edits, deletions, joins
        own = event.get("user") == context.bot_user_id or (
            context.bot_id is not None and event.get("bot_id") == context.bot_id
        )
        if own:
            return
        from_bot = bool(event.get("bot_id")) or subtype == "bot_message"
        channel, ts = event.get("channel"), event.get("ts")
        thread_ts = event.get("thread_ts")
        top_level = thread_ts is None or thread_ts == ts
        mentioned = bool(context.bot_user_id) and f"<@{context.bot_user_id}>" in str(
            event.get("text") or ""
        )
        if top_level and channel and ts:
            alert = conversation.alert_in(event)
            if alert is not None:
                await conversation.on_alert(alert, channel=channel, message_ts=ts)
            return
        if from_bot or mentioned or not event.get("user") or not thread_ts or not channel:
            return  # mentions are app_mention's; other bots don't steer tasks
        try:
            await conversation.on_reply(channel, thread_ts, event["user"], event.get("text") or "")
        except FixbotError as error:
            await conversation.threads.ephemeral(
                channel, event["user"], str(error), thread_ts=thread_ts
            )

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], context: AsyncBoltContext) -> None:
        user, channel = event.get("user"), event.get("channel")
        if not user or not channel or event.get("bot_id"):
            return
        reply = await conversation.on_mention(
            channel=channel,
            ts=event["ts"],
            thread_ts=event.get("thread_ts"),
            user=user,
            text=event.get("text") or "",
            bot_user_id=context.bot_user_id,
        )
        if reply is not None:
            await conversation.threads.ephemeral(
                channel, user, reply.text, thread_ts=event.get("thread_ts")
            )

    @app.action("plan_alert")
    async def plan_alert(ack: Any, body: dict[str, Any], respond: Any) -> None:
        await ack()
        value = str(body["actions"][0].get("value", ""))
        async with answering(respond):
            if not value.isdigit():
                raise Refused("That button does not belong to an alert I know.")
            offer = clicked_message_ts(body)
            await conversation.plan_alert(int(value), body["user"]["id"], offer_ts=offer)

    @app.action("plan_again")
    async def plan_again(ack: Any, body: dict[str, Any], respond: Any) -> None:
        await ack()
        value = str(body["actions"][0].get("value", ""))
        async with answering(respond):
            if not value.isdigit():
                raise Refused("That button does not belong to a fix I know.")
            verdict = clicked_message_ts(body)
            await conversation.after_merge.plan_again(
                int(value), body["user"]["id"], verdict_ts=verdict
            )

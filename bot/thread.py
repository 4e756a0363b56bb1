"""Posting into Slack for the workflow: every text passes the redaction filter first."""

from __future__ import annotations

from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.faults import transient
from bot.redact import Redactor, redact_blocks
from bot.views import Message
from repos.errors import FixbotError


class SlackUnavailable(FixbotError):
    """Slack refused or could not take a message Fixbot had to post."""


class SlackThreads:
    """The workflow's only way to Slack: post, edit, answer privately, upload."""

    def __init__(self, client: AsyncWebClient, redactor: Redactor) -> None:
        self.client = client
        self.redact = redactor

    async def post(self, channel: str, message: Message, *, thread_ts: str | None = None) -> str:
        """Post a message (a reply when `thread_ts` is given); returns its ts."""
        try:
            response = await self.client.chat_postMessage(
                channel=channel,
                thread_ts=thread_ts,
                unfurl_links=False,
                **self._content(message),
            )
        except SlackApiError as error:
            passing = transient(error)  # Slack briefly away: the step waits and tries again
            if passing is not None:
                raise passing from error
            reason = error.response.get("error", "unknown error")
            raise SlackUnavailable(
                f"Slack refused my message in <#{channel}> ({reason}); "
                "invite @fixbot to the channel and try again."
            ) from None
        return str(response["ts"])

    async def update(self, channel: str, ts: str, message: Message) -> None:
        await self.client.chat_update(channel=channel, ts=ts, **self._content(message))

    async def ephemeral(
        self, channel: str, user: str, text: str, *, thread_ts: str | None = None
    ) -> None:
        """A private answer; silently skipped when Slack can't deliver it (user not in channel)."""
        try:
            await self.client.chat_postEphemeral(
                channel=channel, user=user, text=self.redact(text), thread_ts=thread_ts
            )
        except SlackApiError:
            pass

    async def upload(
        self, channel: str, thread_ts: str, *, filename: str, content: str, title: str
    ) -> None:
        await self.client.files_upload_v2(
            channel=channel,
            thread_ts=thread_ts,
            filename=filename,
            content=self.redact(content),
            title=title,
            request_file_info=False,
        )

    async def publish_home(self, user: str, view: dict[str, Any]) -> None:
        blocks = redact_blocks(view.get("blocks", []), self.redact)
        await self.client.views_publish(user_id=user, view={**view, "blocks": blocks})

    async def permalink(self, channel: str, ts: str) -> str | None:
        try:
            response = await self.client.chat_getPermalink(channel=channel, message_ts=ts)
        except SlackApiError:
            return None
        return str(response["permalink"])

    async def replies(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """A thread's messages, its first 100."""
        response = await self.client.conversations_replies(channel=channel, ts=thread_ts, limit=100)
        return [m for m in response.get("messages") or [] if isinstance(m, dict)]

    def _content(self, message: Message) -> dict[str, Any]:
        return {
            "text": self.redact(message.text),
            "blocks": redact_blocks(message.blocks, self.redact),
        }

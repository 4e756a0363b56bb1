"""`respond()` over one HTTP session for the whole app.

Bolt's `AsyncRespond` opens and closes an aiohttp session (a new connection, with its
TLS handshake) for every answer; under a burst of commands that cost shows up in the
acknowledgements of the next ones. This middleware gives each request a `respond`
that posts to its `response_url` through the app's shared session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import ClientSession
from slack_bolt.async_app import AsyncBoltContext, AsyncRespond
from slack_bolt.context.respond.internals import _build_message
from slack_sdk.webhook.async_client import AsyncWebhookClient, WebhookResponse

Middleware = Callable[[AsyncBoltContext, Callable[[], Awaitable[Any]]], Awaitable[Any]]


class SharedSessionRespond(AsyncRespond):
    """Bolt's `respond()`, posting through `session`."""

    def __init__(self, context: AsyncBoltContext, session: ClientSession) -> None:
        super().__init__(
            response_url=context.response_url, proxy=context.client.proxy, ssl=context.client.ssl
        )
        self.session = session

    async def __call__(self, *args: Any, **kwargs: Any) -> WebhookResponse:
        text = args[0] if args else kwargs.get("text")
        message = (
            _build_message(**text) if isinstance(text, dict) else _build_message(*args, **kwargs)
        )
        assert self.response_url is not None  # the middleware only puts it where there is one
        client = AsyncWebhookClient(
            self.response_url, session=self.session, proxy=self.proxy, ssl=self.ssl
        )
        return await client.send_dict(message)


def shared_session_respond(session: ClientSession) -> Middleware:
    """Middleware: requests that carry a `response_url` answer through `session`."""

    async def middleware(context: AsyncBoltContext, next: Callable[[], Awaitable[Any]]) -> Any:
        if context.response_url is not None:
            context["respond"] = SharedSessionRespond(context, session)
        return await next()

    return middleware

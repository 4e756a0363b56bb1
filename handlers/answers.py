"""Answering a click or command that Fixbot refused: privately, to the person, in words."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from slack_bolt.async_app import AsyncRespond

from bot.errors import FixbotError


@asynccontextmanager
async def answering(respond: AsyncRespond, unknown: str) -> AsyncIterator[None]:
    """Run the body; a malformed payload gets `unknown`, a refusal gets its own sentence."""
    try:
        yield
    except (ValueError, KeyError):
        await respond(text=unknown, response_type="ephemeral", replace_original=False)
    except FixbotError as error:
        await respond(text=str(error), response_type="ephemeral", replace_original=False)

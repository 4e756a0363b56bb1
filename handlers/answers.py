"""Answering a click or command privately, to the person, in words, whatever stopped it.

A listener is the boundary between Slack and Fixbot: a refusal gets its own sentence, a
service that is briefly away says so, and anything else is logged and still answered,
so no one is left without a reply and no envelope goes unacknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from slack_bolt.async_app import AsyncRespond

from bot.faults import transient
from repos.errors import FixbotError

log = logging.getLogger(__name__)


@asynccontextmanager
async def answering(respond: AsyncRespond) -> AsyncIterator[None]:
    """Run the body; if it raises, tell the person why, privately."""
    try:
        yield
    except Exception as error:
        passing = transient(error)
        if passing is not None:
            text = f"Fixbot could not do that just now: {passing}. Try again in a minute."
        elif isinstance(error, FixbotError):
            text = str(error)
        else:
            log.exception("a listener failed")
            text = (
                f"Fixbot could not do that: an unexpected error ({type(error).__name__}), "
                "written to its log."
            )
        try:
            await respond(text=text, response_type="ephemeral", replace_original=False)
        except Exception as unanswered:  # Slack itself is away: the log is all that is left
            log.warning("could not answer the person: %s (%s)", unanswered, text)


def clicked_message_ts(body: Mapping[str, Any]) -> str | None:
    """The ts of the message whose button was clicked (None for App Home). A click can come
    before Fixbot has saved that ts, so the click's own is the one to update."""
    message = body.get("message")
    return str(message["ts"]) if isinstance(message, Mapping) and "ts" in message else None

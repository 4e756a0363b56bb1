"""Exactly once per Slack trigger: a redelivered event, command or click does nothing twice.

Slack sends an envelope again when its acknowledgement is late or lost, to any replica's
connection. Every event has an `event_id` and every command or click a `trigger_id`; the
first replica to record it acts, the others acknowledge and stop (storage/triggers.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.response import BoltResponse
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.faults import transient
from storage.triggers import first_delivery

log = logging.getLogger(__name__)

Middleware = Callable[..., Awaitable[BoltResponse | None]]


def once_per_trigger(sessions: async_sessionmaker[AsyncSession]) -> Middleware:
    """A Bolt global middleware that lets each trigger through once."""

    async def middleware(body: dict[str, Any], next: Callable[[], Awaitable[None]]) -> Any:
        key = body.get("event_id") or body.get("trigger_id")
        if not key:
            return await next()
        try:
            first = await first_delivery(sessions, "slack", str(key))
        except Exception as error:
            if transient(error) is None:
                raise
            # The database is away: the listener answers that it could not act.
            log.warning("could not record Slack trigger %s: %s", key, transient(error))
            return await next()
        if not first:
            return BoltResponse(status=200, body="")  # acknowledged, nothing done again
        return await next()

    return middleware

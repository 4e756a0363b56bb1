"""Exactly once per trigger, across replicas: the first to record a trigger's key acts.

A trigger is anything that starts work: a webhook delivery, a Slack event or click (Slack
delivers again what was not acknowledged in time), an alert's `Plan a fix`. Its key is
recorded in `webhook_deliveries` under a unique constraint, so a second delivery, on any
replica, finds it there.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.tables import WebhookDelivery

log = logging.getLogger(__name__)

KEY_LENGTH = 200  # webhook_deliveries.delivery_id


async def first_delivery(sessions: async_sessionmaker[AsyncSession], source: str, key: str) -> bool:
    """Record the trigger `key` from `source`; False when it was recorded before."""
    try:
        async with sessions.begin() as session:
            session.add(WebhookDelivery(source=source, delivery_id=key[:KEY_LENGTH]))
    except IntegrityError:
        log.info("%s trigger %s seen before; ignored", source, key)
        return False
    return True


async def forget_before(
    sessions: async_sessionmaker[AsyncSession], source: str, before: datetime
) -> None:
    """Drop `source`'s triggers recorded before `before`: their redeliveries are long over."""
    async with sessions.begin() as session:
        await session.execute(
            delete(WebhookDelivery).where(
                WebhookDelivery.source == source, WebhookDelivery.received_at < before
            )
        )

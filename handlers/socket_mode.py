"""Socket Mode that acknowledges an envelope as it arrives, then runs Bolt on it.

Bolt's own handler sends the acknowledgement once the middleware and the listener's
`ack()` ran, so Slack's 3 s included whatever came before the ack: the once-per-trigger
write to the database above all, which queues behind other writes under a burst. Every
Fixbot listener acknowledges with nothing (`await ack()`, no payload), so acking on
arrival tells Slack the same thing, sooner; the listener's own `ack()` then has no one
to answer. A listener that must answer in its acknowledgement (a view submission's
errors, options) needs Bolt's order back for its envelope type.
"""

from __future__ import annotations

import logging
import time

from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.adapter.socket_mode.async_internals import run_async_bolt_app
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from bot.metrics import SLACK_ACK_SECONDS

log = logging.getLogger(__name__)


class AckFirstSocketModeHandler(AsyncSocketModeHandler):
    """Bolt's Socket Mode handler, acknowledging each envelope before Bolt runs, and timing
    that from the envelope's arrival (the part of Slack's 3 s the app controls)."""

    async def handle(self, client: SocketModeClient, req: SocketModeRequest) -> None:  # type: ignore[override]
        started = time.monotonic()
        try:
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
        finally:
            SLACK_ACK_SECONDS.labels(req.type).observe(time.monotonic() - started)
        response = await run_async_bolt_app(self.app, req)
        if response.status != 200:  # as Bolt's handler says it
            log.info("Bolt answered %s: %s", response.status, response.body)

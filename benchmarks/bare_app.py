"""The baseline for ack latency: a bare Bolt app over Socket Mode that only acknowledges /fix.

Same libraries and the same Web API client settings as Fixbot, nothing else: no database,
no worker pool, no logging setup. `ack_latency.py` and `ack_burst.py` start it as a
subprocess, with SLACK_BOT_TOKEN, SLACK_APP_TOKEN and SLACK_API_URL pointing at a
LocalSlack. `--respond`: after the ack it also answers privately with Bolt's `respond()`,
as Fixbot answers a bad reference.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient


async def serve(respond_too: bool) -> None:
    client = AsyncWebClient(
        token=os.environ["SLACK_BOT_TOKEN"], base_url=os.environ["SLACK_API_URL"]
    )
    app = AsyncApp(client=client)

    @app.command("/fix")
    async def fix(ack: AsyncAck, respond: AsyncRespond) -> None:
        await ack()
        if respond_too:
            await respond(text="That is not a reference.", response_type="ephemeral")

    handler = AsyncSocketModeHandler(app, os.environ["SLACK_APP_TOKEN"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await handler.connect_async()
    await stop.wait()
    await handler.close_async()


if __name__ == "__main__":
    asyncio.run(serve(respond_too="--respond" in sys.argv[1:]))

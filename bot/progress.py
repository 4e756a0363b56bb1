"""The live status message of a running step: one message, edited in place, throttled."""

from __future__ import annotations

import asyncio
import contextlib
import time

from bot.seams import Threads
from bot.views import status_message

MIN_EDIT_INTERVAL_S = 2.0  # at most one edit per message this often (Slack's chat.update tier)


class StatusMessage:
    """Shows what a step is doing now, its elapsed time and spend; always ends with a final edit."""

    def __init__(
        self, threads: Threads, channel: str, thread_ts: str, step: str, ts: str | None = None
    ) -> None:
        self.threads = threads
        self.channel = channel
        self.thread_ts = thread_ts
        self.step = step
        self.ts = ts
        self.action = "Starting"
        self.cost_usd = 0.0
        self.started = time.monotonic()
        self._last_edit = 0.0
        self._pending: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Post the message (or take over an existing one after a restart); returns its ts."""
        message = status_message(self.step, self.action, 0.0, self.cost_usd)
        if self.ts is None:
            self.ts = await self.threads.post(self.channel, message, thread_ts=self.thread_ts)
        else:
            await self.threads.update(self.channel, self.ts, message)
        self._last_edit = time.monotonic()
        return self.ts

    async def show(self, action: str, cost_usd: float | None = None) -> None:
        """Record the current action; edits now, or once the throttle window has passed."""
        self.action = action
        if cost_usd is not None:
            self.cost_usd = cost_usd
        if self._pending is not None:
            return  # an edit is already scheduled and will show the newest action
        wait = self._last_edit + MIN_EDIT_INTERVAL_S - time.monotonic()
        self._pending = asyncio.create_task(self._edit_after(max(wait, 0.0)))

    async def finish(self, outcome: str, cost_usd: float | None = None) -> None:
        """The final edit: how the step ended, its time and spend."""
        if cost_usd is not None:
            self.cost_usd = cost_usd
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pending
            self._pending = None
        if self.ts is None:
            return
        elapsed = time.monotonic() - self.started
        message = status_message(
            self.step, self.action, elapsed, self.cost_usd, done=True, outcome=outcome
        )
        await self.threads.update(self.channel, self.ts, message)

    async def _edit_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._pending = None
        self._last_edit = time.monotonic()
        if self.ts is not None:
            elapsed = self._last_edit - self.started
            message = status_message(self.step, self.action, elapsed, self.cost_usd)
            await self.threads.update(self.channel, self.ts, message)

"""Which failures pass: one place that tells a transient failure from a real one.

Fixbot's own clients raise `Transient` themselves (Sentry, GitHub and Jira answering
429 or 5xx, git's remote away, the model API overloaded). What arrives from libraries
as their own exceptions (the database driver, the Slack SDK, the network) is read here.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
from slack_sdk.errors import SlackApiError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from repos.errors import Transient

T = TypeVar("T")

log = logging.getLogger(__name__)

RETRY_MAX_S = 30.0  # a call retried in place waits at most this long between tries


def transient(error: BaseException) -> Transient | None:
    """`error` as a `Transient` when waiting may cure it; None when it will not."""
    if isinstance(error, Transient):
        return error
    if isinstance(error, OperationalError | InterfaceError) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    ):
        return Transient(f"the database was unavailable ({_first_line(error.orig or error)})")
    if isinstance(error, SlackApiError):
        status = error.response.status_code
        if status == 429 or status >= 500:
            retry_after = error.response.headers.get("Retry-After")
            return Transient(
                f"Slack answered HTTP {status} ({error.response.get('error', 'no reason')})",
                retry_after=float(retry_after) if str(retry_after).isdigit() else None,
            )
        return None
    if isinstance(error, aiohttp.ClientError | ConnectionError | TimeoutError | socket.gaierror):
        # The database driver's connect (a refused connection) ends up here too.
        return Transient(f"a service could not be reached ({_first_line(error)})")
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


class Backoff:
    """Waits between tries of a call to a service that is away, 1 s doubling to 30 s,
    and logs each wait once, in one line, without a traceback."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.delay = 1.0

    async def wait(self, error: BaseException) -> None:
        reason = transient(error) or error
        log.warning("%s failed; trying again in %.0f s: %s", self.what, self.delay, reason)
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, RETRY_MAX_S)

    def reset(self) -> None:
        self.delay = 1.0


async def retried(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run `call` (a database write, say), trying again in place while its failure passes.

    Other errors pass through; cancellation ends the waiting.
    """
    unavailable = Backoff(what)
    while True:
        try:
            return await call()
        except Exception as error:
            if transient(error) is None:
                raise
            await unavailable.wait(error)

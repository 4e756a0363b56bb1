"""Which failures pass: one place that tells a transient failure from a real one.

Fixbot's own clients raise `Transient` themselves (Sentry, GitHub and Jira answering
429 or 5xx, git's remote away, the model API overloaded). What arrives from libraries
as their own exceptions (the database driver, the Slack SDK, the network) is read here.
"""

from __future__ import annotations

import socket

import aiohttp
from slack_sdk.errors import SlackApiError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from repos.errors import Transient


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

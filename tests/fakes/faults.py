"""Fault switches a fake server can carry: answer an error for the next N requests, or
hold matching requests until the test lets them go.

    sentry.faults.fail(503, times=2)                       # the next 2 requests get 503
    github.faults.fail(429, times=1, path="/pulls", retry_after=1)
    held = github.faults.hold("POST", "/graphql")          # matching requests wait…
    await held.reached.wait()                              # …one is waiting now
    held.release()                                         # it (and later ones) go on

A path matches when it contains `path`; no method or path matches everything.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Held:
    """Requests matching `method` and `path` wait here until `release()`."""

    method: str | None
    path: str | None
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.released.set()


@dataclass
class _Failure:
    status: int
    times: int
    method: str | None
    path: str | None
    retry_after: int | None


class Faults:
    """What a fake does wrong, switched on by the test."""

    def __init__(self) -> None:
        self.failed = 0  # requests answered with an injected error
        self._failures: list[_Failure] = []
        self._holds: list[Held] = []

    def fail(
        self,
        status: int,
        *,
        times: int = 1,
        method: str | None = None,
        path: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next `times` matching requests with `status`."""
        self._failures.append(_Failure(status, times, method, path, retry_after))

    def hold(self, method: str | None = None, path: str | None = None) -> Held:
        """Keep matching requests waiting until the returned `Held` is released."""
        held = Held(method, path)
        self._holds.append(held)
        return held

    async def apply(self, request: web.Request) -> web.Response | None:
        """Called first by the fake for every request: an injected answer, or None."""
        for held in self._holds:
            if _matches(request, held.method, held.path) and not held.released.is_set():
                held.reached.set()
                await held.released.wait()
        for failure in self._failures:
            if failure.times > 0 and _matches(request, failure.method, failure.path):
                failure.times -= 1
                self.failed += 1
                headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after else {}
                body = {"message": f"injected HTTP {failure.status}"}
                return web.json_response(body, status=failure.status, headers=headers)
        return None


def _matches(request: web.Request, method: str | None, path: str | None) -> bool:
    return (method is None or request.method == method) and (path is None or path in request.path)

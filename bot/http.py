"""The HTTP server: liveness, readiness and Prometheus metrics (webhooks join it later)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]
MetricsRefresh = Callable[[], Awaitable[None]]


def make_http_app(
    readiness: ReadinessCheck,
    refresh_metrics: MetricsRefresh | None = None,
    webhooks: Sequence[web.RouteDef] = (),
    mounts: Mapping[str, web.Application] | None = None,
    exposition: Callable[[], bytes] = generate_latest,
) -> web.Application:
    """`/healthz` (the process answers), `/readyz` (database and Slack), `/metrics`.

    `refresh_metrics` runs before each scrape, for gauges read from the database.
    `mounts` serves other applications under a prefix (`/local`: the local workspace).
    `exposition` renders the metrics (the worker processes' added: `metrics.exposition`).
    """

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(_request: web.Request) -> web.Response:
        checks = await readiness()
        ready = all(checks.values())
        return web.json_response({"ok": ready, **checks}, status=200 if ready else 503)

    async def metrics(_request: web.Request) -> web.Response:
        if refresh_metrics is not None:
            try:
                await refresh_metrics()
            except Exception:  # a scrape still answers with what the process counted
                log.warning("refreshing metrics from the database failed", exc_info=True)
        return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_routes(webhooks)  # POST /webhooks/{sentry,github,jira}: bot/webhooks.py
    for prefix, mounted in (mounts or {}).items():
        app.router.add_get(prefix, _redirect(f"{prefix}/"))
        app.add_subapp(prefix, mounted)
    return app


def _redirect(location: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def redirect(_request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(location)

    return redirect

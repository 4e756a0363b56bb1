"""Prometheus metrics, served at `/metrics`.

The reference system's agent metrics (`ai_agent_*`, with `agent` = "planning" or
"executor"), and Fixbot's own: Slack acknowledgement latency, Slack API errors by
method, agent spend and active steps. Counters are per replica: the app's worker
processes write theirs to files (prometheus_client's multiprocess mode) and the app adds
them to its own at each scrape. The queue length is read from the jobs table at scrape
time, so every replica reports the same shared queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

from storage.jobs import JobKind

log = logging.getLogger(__name__)

# The reference system's names for the two steps.
AGENTS: dict[str, str] = {JobKind.PLANNING: "planning", JobKind.EXECUTION: "executor"}
QUEUES = (JobKind.PLANNING, JobKind.EXECUTION)

TASKS_STARTED = Counter("ai_agent_tasks_started_total", "Agent steps started.", ["agent"])
TASKS_COMPLETED = Counter(
    "ai_agent_tasks_completed_total",
    "Agent steps ended, by how: success, failed, cancelled, interrupted (shutdown).",
    ["agent", "status"],
)
TASK_DURATION = Histogram(
    "ai_agent_task_duration_seconds",
    "Wall time of an agent step, from claim to end.",
    ["agent", "status"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 2700, 3600),
)
QUEUE_LENGTH = Gauge(
    "ai_agent_queue_length", "Jobs waiting to be claimed, by kind.", ["queue_name"]
)
ERRORS = Counter(
    "ai_agent_errors_total",
    "Agent steps that went wrong: timeout, agent_transient, step_failed, internal.",
    ["agent", "error_type"],
)
SLACK_ACK_SECONDS = Histogram(
    "fixbot_slack_ack_seconds",
    "From a Socket Mode envelope reaching the app to its acknowledgement being sent "
    "(handlers/socket_mode.py).",
    ["type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5),
)
SLACK_API_ERRORS = Counter(
    "fixbot_slack_api_errors_total",
    "Slack Web API attempts that failed (ok: false, an HTTP error, or no answer).",
    ["method"],
)
AGENT_SPEND = Counter(
    "fixbot_agent_spend_usd_total", "What Claude Code steps cost, in US dollars.", ["agent"]
)
ACTIVE_STEPS = Gauge(
    "fixbot_active_steps",
    "Agent steps running in this replica.",
    multiprocess_mode="livesum",  # summed over the live worker processes
)


def agent_label(kind: str) -> str:
    """The `agent` label for a job kind."""
    return AGENTS.get(kind, kind)


class StepMetrics:
    """One job's step: counted as started when made; `finish` records how it ended."""

    def __init__(self, kind: str) -> None:
        self.agent = agent_label(kind)
        self.started = time.monotonic()
        self.status = "success"
        self.error_type: str | None = None
        TASKS_STARTED.labels(self.agent).inc()
        ACTIVE_STEPS.inc()

    def ended(self, status: str, error_type: str | None = None) -> None:
        """Say how the step ended (the default is success)."""
        self.status, self.error_type = status, error_type

    def finish(self) -> None:
        """Record how the step ended."""
        ACTIVE_STEPS.dec()
        duration = time.monotonic() - self.started
        TASKS_COMPLETED.labels(self.agent, self.status).inc()
        TASK_DURATION.labels(self.agent, self.status).observe(duration)
        if self.error_type is not None:
            ERRORS.labels(self.agent, self.error_type).inc()


def set_queue_lengths(counts: Mapping[str, int]) -> None:
    """Set `ai_agent_queue_length` from the queued jobs per kind (read before each scrape)."""
    for name in {*QUEUES, *counts}:
        QUEUE_LENGTH.labels(name).set(counts.get(name, 0))


def exposition(workers_dir: Path | None) -> bytes:
    """This process's metrics in Prometheus' text format, its worker processes' added
    when they write to `workers_dir`."""
    if workers_dir is None:
        return generate_latest()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_WithWorkers(workers_dir))
    return generate_latest(registry)


class _WithWorkers:
    """This process's samples plus the worker processes', same names and labels summed."""

    def __init__(self, workers_dir: Path) -> None:
        self.workers = MultiProcessCollector(None, path=str(workers_dir))

    def collect(self) -> Iterable[Metric]:
        families = {family.name: family for family in REGISTRY.collect()}
        for family in self.workers.collect():
            own = families.setdefault(family.name, family)
            if own is family:
                continue
            samples = {(s.name, tuple(sorted(s.labels.items()))): s for s in own.samples}
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                mine = samples.get(key)
                samples[key] = (
                    sample if mine is None else mine._replace(value=mine.value + sample.value)
                )
            own.samples = list(samples.values())
        return families.values()


class SlackErrorCounter(AsyncRetryHandler):
    """Counts failed Slack Web API attempts by method; never asks for a retry itself.

    slack_sdk asks its retry handlers in order and stops at the first that says yes, so
    this one goes first in `retry_handlers` to see every attempt.
    """

    def __init__(self) -> None:
        super().__init__(max_retry_count=0)

    async def can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if error is not None or (response is not None and _failed(response)):
            SLACK_API_ERRORS.labels(_method(request.url)).inc()
        return False

    async def _can_retry_async(self, **_: Any) -> bool:  # never reached: see above
        return False


def _failed(response: HttpResponse) -> bool:
    if response.status_code >= 400:
        return True
    return isinstance(response.body, dict) and response.body.get("ok") is False


def _method(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "unknown"

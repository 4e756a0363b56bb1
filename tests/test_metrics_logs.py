"""Operations: `/metrics` after a scripted planning run, health and readiness, JSON logs,
and that run's transcript as `fixbot tasks transcript` shows it."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from typing import Any

import aiohttp
from helpers import free_port
from prometheus_client.parser import text_string_to_metric_families
from test_cli import fixbot
from test_core_loop import buttons, script_planning
from world import CHANNEL, World, seed_sentry_issue

from bot import logs
from bot.logs import setup_logging
from bot.redact import Redactor


async def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at /metrics, keyed by (name, sorted labels)."""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def test_metrics_health_and_logs_after_a_planning_run(world: World) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    world.env["FIXBOT_HTTP_PORT"] = str(port)
    seed_sentry_issue(world)
    script_planning(world)
    # One refused status edit: counted as a Slack API error, then retried after Retry-After.
    world.slack.force_429("chat.update", retry_after=1, times=1)
    await world.start_app()

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200 and await response.json() == {"ok": True}
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 200
            assert await response.json() == {
                "ok": True,
                "database": True,
                "slack": True,
                "workers": True,
            }

    await world.slack.slash_command("SHOP-1")
    parent = (await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1]))[0]
    await world.slack.wait_for(
        lambda: any(buttons(m) for m in world.slack.thread(CHANNEL, parent["ts"])),
        timeout=60,
        what="the plan",
    )

    # The plan is posted a moment before the job's bookkeeping ends.
    for _ in range(150):
        samples = await scrape(base)
        if value(samples, "ai_agent_tasks_completed_total", agent="planning", status="success"):
            break
        await asyncio.sleep(0.1)
    assert value(samples, "ai_agent_tasks_started_total", agent="planning") == 1
    assert value(samples, "ai_agent_tasks_completed_total", agent="planning", status="success") == 1
    assert (
        value(samples, "ai_agent_task_duration_seconds_count", agent="planning", status="success")
        == 1
    )
    duration = value(
        samples, "ai_agent_task_duration_seconds_sum", agent="planning", status="success"
    )
    assert duration is not None and 0 < duration < 60
    assert value(samples, "ai_agent_queue_length", queue_name="planning") == 0
    assert value(samples, "ai_agent_queue_length", queue_name="execution") == 0
    assert not [key for key in samples if key[0] == "ai_agent_errors_total"]
    assert value(samples, "fixbot_active_steps") == 0
    with sqlite3.connect(world.root / "fixbot.db") as db:
        (cost,) = db.execute("select sum(cost_usd) from agent_runs").fetchone()
    spend = value(samples, "fixbot_agent_spend_usd_total", agent="planning")
    assert cost > 0 and spend is not None and abs(spend - cost) < 1e-9
    acks = value(samples, "fixbot_slack_ack_seconds_count", type="slash_commands")
    assert acks is not None and acks >= 1
    ack_time = value(samples, "fixbot_slack_ack_seconds_sum", type="slash_commands")
    assert ack_time is not None and ack_time < 3  # within Slack's limit (ack.latency_s is
    # Slack's side of the same ack: another clock, so not compared)
    assert value(samples, "fixbot_slack_api_errors_total", method="chat.update") == 1

    assert await world.stop_app() == 0
    lines = [line for line in world.app_log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert set(record) >= {"timestamp", "level", "agent", "task_id", "message", "data"}
    messages = [record["message"] for record in records]
    start = messages.index("planning step started")
    end = messages.index("planning step ended: success")
    during = [
        record
        for record in records[start : end + 1]
        if record["logger"].split(".")[0] in ("bot", "agents", "httpx", "claude_agent_sdk")
    ]
    assert len(during) >= 4, during  # the start, Sentry's answers, the CLI starting, the end
    assert all(record["task_id"] == 1 and record["agent"] == "planning" for record in during)
    assert records[start]["data"] == {"job": 1, "attempt": 1}
    assert world.env["SLACK_BOT_TOKEN"] not in world.app_log()

    # The step's Claude Code session file, as `fixbot tasks transcript` reads it back.
    run = await fixbot(world, "tasks", "transcript", "1")
    assert run.code == 0, run.err
    assert run.lines[0].startswith("=== planning · session ")
    assert run.lines[1].startswith("[user] Plan a fix for SHOP-1")
    assert any(line.startswith("  → Read ") and "pricing.py" in line for line in run.lines)
    assert any("return price - price * percent" in line for line in run.lines)
    assert any(line.startswith("  → StructuredOutput ") for line in run.lines)


def test_log_lines_are_tagged_and_redacted(capsys: Any) -> None:
    secret = "xoxb-1234-abcdef-secret"
    redactor = Redactor(["sentry-secret-value"])
    logger = logging.getLogger("fixbot.test")
    try:
        setup_logging("json", redactor)
        with logs.context(task_id=7, agent="executor"):
            logger.info("token %s", secret, extra={"data": {"auth": "sentry-secret-value", "n": 2}})
            try:
                raise RuntimeError(f"failed with {secret}")
            except RuntimeError:
                logger.exception("boom")
        logger.info("outside", extra={"task_id": 9, "agent": "planning"})
        setup_logging("console", redactor)
        with logs.context(task_id=7, agent="executor"):
            logger.warning("for people %s", secret, extra={"data": {"repo": "acme/shop"}})
    finally:
        logging.getLogger().handlers.clear()
        logging.captureWarnings(False)
    err = capsys.readouterr().err
    assert secret not in err and "sentry-secret-value" not in err
    lines = err.splitlines()
    assert len(lines) == 4  # three JSON objects (the traceback inside one), one console line
    first, second, third = (json.loads(line) for line in lines[:3])
    console = lines[3]
    assert (first["task_id"], first["agent"]) == (7, "executor")
    assert first["message"] == "token [redacted]"
    assert first["data"] == {"auth": "[redacted]", "n": 2}
    assert second["message"] == "boom" and "[redacted]" in second["exception"]
    assert (third["task_id"], third["agent"], third["message"]) == (9, "planning", "outside")
    assert "WARNING" in console and "[task 7 executor]" in console
    assert console.endswith('for people [redacted] {"repo": "acme/shop"}')

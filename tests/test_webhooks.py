"""Signed webhooks end to end: a good, a bad and a replayed delivery for each vendor."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from test_conversation import buttons, plan_script, start_fix, wait_for_plan
from world import CHANNEL, World, seed_sentry_issue

PAYLOADS = Path(__file__).parent / "payloads"
SECRETS = {"sentry": "sentry-client-secret", "github": "gh-hook-secret", "jira": "jira-secret"}


def payload(name: str, **values: str) -> bytes:
    text = (PAYLOADS / name).read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return json.dumps(json.loads(text)).encode()


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def start(world: World, *, jira: bool = False, **config: Any) -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    world.env |= {
        "FIXBOT_HTTP_PORT": str(port),
        "SENTRY_WEBHOOK_SECRET": SECRETS["sentry"],
        "GITHUB_WEBHOOK_SECRET": SECRETS["github"],
        "JIRA_WEBHOOK_SECRET": SECRETS["jira"],
    }
    if jira:  # with Jira set up, `/fix SHOP-1` would name a Jira issue
        world.env |= {
            "JIRA_URL": world.jira.url,
            "JIRA_EMAIL": world.jira.email,
            "JIRA_API_TOKEN": world.jira.token,
        }
    world.config |= config
    await world.start_app()
    return f"http://127.0.0.1:{port}/webhooks"


async def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url, data=body, headers={"Content-Type": "application/json", **headers}
        ) as response:
            return response.status, await response.json()


def count(world: World, table: str) -> int:
    return int(
        sqlite3.connect(world.root / "fixbot.db")
        .execute(f"select count(*) from {table}")
        .fetchone()[0]
    )


async def test_sentry_issue_webhook(world: World) -> None:
    issue_id = seed_sentry_issue(world)
    hooks = await start(world)
    body = payload(
        "sentry_issue_created.json", SENTRY=world.sentry.url, ISSUE_ID=issue_id, SHORT_ID="SHOP-1"
    )
    headers = {"Sentry-Hook-Resource": "issue", "Request-ID": str(uuid.uuid4())}

    bad = {**headers, "Sentry-Hook-Signature": sign("wrong", body)}
    assert (await post(f"{hooks}/sentry", body, bad))[0] == 401
    assert (await post(f"{hooks}/sentry", body, headers))[0] == 401
    assert world.slack.messages(CHANNEL) == [] and count(world, "alerts") == 0

    good = {**headers, "Sentry-Hook-Signature": sign(SECRETS["sentry"], body)}
    status, answer = await post(f"{hooks}/sentry", body, good)
    assert (status, answer) == (200, {"ok": True})
    alert = (await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1]))[0]
    await world.slack.wait_for(
        lambda: any(buttons(m) == ["Plan a fix"] for m in world.slack.thread(CHANNEL, alert["ts"]))
    )
    status, answer = await post(f"{hooks}/sentry", body, good)
    assert answer.get("replayed") is True
    assert len(world.slack.messages(CHANNEL)) == 1 and count(world, "alerts") == 1


async def test_github_webhooks_close_and_approve(world: World) -> None:
    seed_sentry_issue(world)
    plan_script(world)
    hooks = await start(world, github_approvers=["octocat"])
    thread_ts = await start_fix(world)
    await wait_for_plan(world, thread_ts)
    number = str(world.github.pulls("acme/shop")[0].number)

    comment = payload("github_issue_comment.json", NUMBER=number, LOGIN="mallory")
    headers = {"X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": str(uuid.uuid4())}
    good = {**headers, "X-Hub-Signature-256": "sha256=" + sign(SECRETS["github"], comment)}
    assert (await post(f"{hooks}/github", comment, {**headers, "X-Hub-Signature-256": "sha256=0"}))[
        0
    ] == 401
    _, answer = await post(f"{hooks}/github", comment, good)
    assert answer == {"ok": False, "error": "not an approver"}

    comment = payload("github_issue_comment.json", NUMBER=number, LOGIN="octocat")
    headers = {"X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": str(uuid.uuid4())}
    good = {**headers, "X-Hub-Signature-256": "sha256=" + sign(SECRETS["github"], comment)}
    assert (await post(f"{hooks}/github", comment, good)) == (200, {"ok": True})
    await world.slack.wait_for(
        lambda: (
            "Approved by octocat on GitHub" in json.dumps(world.slack.thread(CHANNEL, thread_ts))
        )
    )
    assert (await post(f"{hooks}/github", comment, good))[1].get("replayed") is True

    closed = payload("github_pull_request_closed.json", NUMBER=number)
    headers = {"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": str(uuid.uuid4())}
    good = {**headers, "X-Hub-Signature-256": "sha256=" + sign(SECRETS["github"], closed)}
    assert (await post(f"{hooks}/github", closed, headers))[0] == 401
    assert (await post(f"{hooks}/github", closed, good)) == (200, {"ok": True})
    await world.slack.wait_for(
        lambda: "was merged by octocat" in json.dumps(world.slack.thread(CHANNEL, thread_ts))
    )
    assert (await post(f"{hooks}/github", closed, good))[1].get("replayed") is True
    merged_notes = [
        m for m in world.slack.thread(CHANNEL, thread_ts) if "was merged" in json.dumps(m)
    ]
    assert len(merged_notes) == 1


async def test_jira_issue_created_with_the_label(world: World) -> None:
    hooks = await start(world, jira=True)
    world.jira.add_issue("SHOP-42", "Cart total goes negative", description="150% coupon")
    body = payload("jira_issue_created.json", KEY="SHOP-42", LABELS='["fixbot", "checkout"]')
    headers = {"X-Atlassian-Webhook-Identifier": str(uuid.uuid4())}

    assert (await post(f"{hooks}/jira", body, headers))[0] == 401
    assert (await post(f"{hooks}/jira?secret=nope", body, headers))[0] == 401
    for forged in (
        "sha256=",
        "sha256=" + "0" * 64,
        "sha256=" + sign("wrong", body),
        "sha256=" + sign(SECRETS["jira"], body + b" "),
        sign(SECRETS["jira"], body),  # without its prefix
    ):
        forged_headers = {**headers, "X-Hub-Signature": forged}
        assert (await post(f"{hooks}/jira", body, forged_headers))[0] == 401, forged
    assert count(world, "tasks") == 0

    signed = {**headers, "X-Hub-Signature": "sha256=" + sign(SECRETS["jira"], body)}
    assert (await post(f"{hooks}/jira", body, signed)) == (200, {"ok": True})
    parent = (await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1]))[0]
    assert "SHOP-42" in json.dumps(parent)
    assert (await post(f"{hooks}/jira?secret={SECRETS['jira']}", body, headers))[1].get(
        "replayed"
    ) is True
    assert count(world, "tasks") == 1

    unlabelled = payload("jira_issue_created.json", KEY="SHOP-43", LABELS='["checkout"]')
    other = {"X-Atlassian-Webhook-Identifier": str(uuid.uuid4())}
    status, answer = await post(f"{hooks}/jira?secret={SECRETS['jira']}", unlabelled, other)
    assert status == 200 and "ignored" in answer and count(world, "tasks") == 1


async def test_a_signed_github_webhook_with_a_malformed_field_is_ignored(world: World) -> None:
    hooks = await start(world)
    data = json.loads(payload("github_pull_request_closed.json", NUMBER="1"))
    data["number"] = data["pull_request"]["number"] = "not a number"
    closed = json.dumps(data).encode()
    headers = {
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + sign(SECRETS["github"], closed),
    }
    status, answer = await post(f"{hooks}/github", closed, headers)
    assert (status, answer) == (200, {"ok": True, "ignored": "not a Fixbot pull request"})

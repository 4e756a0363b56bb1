"""Signed webhooks: a good, a bad and a replayed delivery for each vendor, end to end.

`webhooks` serves the app's same routes in-process over a `Machine` (tests/memory.py),
for what a delivery leads to; the end-to-end tests here prove the routes in the app.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from helpers import free_port
from memory import REPO, Machine, Posted, build_machine
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import func, select
from test_cli import seed_task
from test_conversation import TITLE, KeptThreads, buttons
from world import CHANNEL, World, git, plan_data, plan_markdown, seed_sentry_issue

from bot.http import make_http_app
from bot.models import RefKind, State
from bot.views import Message
from bot.webhooks import webhook_routes
from repos.workspace import branch_name
from storage.tables import Base, Task

PAYLOADS = Path(__file__).parent / "payloads"
SECRETS = {"sentry": "sentry-client-secret", "github": "gh-hook-secret", "jira": "jira-secret"}
SIGNED = {f"{vendor}_webhook_secret": secret for vendor, secret in SECRETS.items()}
PULL = 7  # a seeded task's pull request
PULL_URL = f"https://github.com/acme/shop/pull/{PULL}"  # in-process, where no GitHub runs


def payload(name: str, **values: str) -> bytes:
    text = (PAYLOADS / name).read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return json.dumps(json.loads(text)).encode()


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_signed(event: str, body: bytes, secret: str = SECRETS["github"]) -> dict[str, str]:
    """The headers of a GitHub delivery of `event`, signed with `secret`."""
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + sign(secret, body),
    }


def sentry_signed(resource: str, body: bytes) -> dict[str, str]:
    """The headers of a Sentry delivery about `resource`, signed with the client secret."""
    return {
        "Sentry-Hook-Resource": resource,
        "Request-ID": str(uuid.uuid4()),
        "Sentry-Hook-Signature": sign(SECRETS["sentry"], body),
    }


async def start(world: World, *, jira: bool = False, **config: Any) -> str:
    port = free_port()
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


def pull_url(world: World) -> str:
    return f"{world.github.url}/acme/shop/pull/{PULL}"


async def seed_pull(world: World, state: str, **values: Any) -> str:
    """A task for SHOP-1 in `state` whose pull request is number PULL (test_cli's
    `seed_task`: no agent step made it); returns its thread."""
    values = {"pr_number": PULL, "pr_url": pull_url(world), "requested_by": "U_ALICE", **values}
    task_id = await seed_task(world, state, **values)
    row = sqlite3.connect(world.root / "fixbot.db").execute(
        "select thread_ts from tasks where id = ?", (task_id,)
    )
    return str(row.fetchone()[0])


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
    hooks = await start(world, github_approvers=["octocat"])
    # A plan awaiting approval on its draft pull request, as planning leaves it (test_core_loop
    # proves planning does); the approval starts its execution, which nothing here awaits.
    thread_ts = await seed_pull(
        world,
        "awaiting_approval",
        plan=plan_data(),
        plan_markdown=plan_markdown(),
        plan_version=1,
        branch=branch_name("SHOP-1", TITLE),
        base_commit=git("rev-parse", "main", cwd=world.origin).strip(),
    )
    slack = AsyncWebClient(token=world.slack.bot_token, base_url=world.slack.api_url)
    plan = await slack.chat_postMessage(channel=CHANNEL, thread_ts=thread_ts, text="Plan v1")
    with sqlite3.connect(world.root / "fixbot.db") as connection:
        connection.execute("update tasks set plan_message_ts = ?", (plan["ts"],))
    number = str(PULL)

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


# In-process


@dataclass
class Hooks:
    """The app's webhook routes over `machine`, served in-process."""

    machine: Machine
    threads: KeptThreads  # the machine's
    client: TestClient[Any, Any]

    async def post(
        self, vendor: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        response = await self.client.post(
            f"/webhooks/{vendor}",
            data=body,
            headers={"Content-Type": "application/json", **headers},
        )
        return response.status, await response.json()

    def said(self, thread_ts: str, words: str) -> Posted | None:
        """The first reply in the thread that says `words`."""
        replies = (m for m in self.threads.texts_of(thread_ts) if m.ts != thread_ts)
        return next((m for m in replies if words in m.text), None)

    async def count(self, table: type[Base]) -> int:
        async with self.machine.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(table)) or 0)

    async def seeded(self, state: State, **values: Any) -> Task:
        """A task for SHOP-1 in `state` in a thread of its own, as if steps had made it."""
        parent = await self.threads.post(CHANNEL, Message("SHOP-1 · a task", []))
        task = Task(
            state=state,
            ref_kind=RefKind.SENTRY,
            ref_key="SHOP-1",
            title=TITLE,
            repo=REPO,
            channel_id=CHANNEL,
            thread_ts=parent,
            requested_by="U_ALICE",
            **values,
        )
        return await self.machine.workflow.store.add(task, "U_ALICE")


@asynccontextmanager
async def webhooks(tmp_path: Path, **settings: Any) -> AsyncIterator[Hooks]:
    """The webhook routes mounted as the app mounts them (bot/service.py), over a `Machine`
    with the webhook secrets, an alert channel and `settings`, on aiohttp's test client."""
    threads = KeptThreads()
    chosen = {**SIGNED, "alert_channels": [CHANNEL], **settings}
    async with build_machine(tmp_path, threads=threads, **chosen) as machine:
        routes = webhook_routes(machine.workflow.settings, machine.workflow, machine.conversation)
        async with TestClient(TestServer(make_http_app(_ready, webhooks=routes))) as client:
            yield Hooks(machine, threads, client)


async def _ready() -> dict[str, bool]:
    return {}


async def test_a_signed_github_webhook_with_a_malformed_field_is_ignored(
    tmp_path: Path,
) -> None:
    data = json.loads(payload("github_pull_request_closed.json", NUMBER="1"))
    data["number"] = data["pull_request"]["number"] = "not a number"
    closed = json.dumps(data).encode()
    async with webhooks(tmp_path) as hooks:
        answer = await hooks.post("github", closed, github_signed("pull_request", closed))
    assert answer == (200, {"ok": True, "ignored": "not a Fixbot pull request"})

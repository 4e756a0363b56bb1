"""Fixbot in conversation: alerts in a channel, replies, mentions, questions.

The Slack wiring (an alert message, the `Plan a fix` click, mentions) runs end to end; what
follows from an alert or a question once it reached the conversation runs in-process on
the task machinery (tests/memory.py).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from fakes.anthropic import structured, tool
from mcp import Client
from memory import MemoryThreads, build_machine
from sqlalchemy import select, update
from test_lifecycle import planned
from world import CHANNEL, World, git, plan_data, seed_sentry_issue

from agents.ask import NO_ANSWER, SERVER
from bot.models import RefKind, State
from bot.views import Message
from repos.workspace import branch_name
from storage.jobs import JobKind
from storage.tables import Alert, Task

PAYLOADS = Path(__file__).parent / "payloads"
TITLE = "AssertionError: discount made the price negative"
ASK = "mcp__fixbot__ask_in_thread"


def sentry_alert(world: World, issue_id: str, short_id: str = "SHOP-1") -> dict[str, Any]:
    return alert_payload(world.sentry.url, issue_id, short_id)


def alert_payload(sentry: str, issue_id: str, short_id: str = "SHOP-1") -> dict[str, Any]:
    """A Sentry alert as Slack delivers it (Block Kit), naming issue `issue_id`."""
    raw = (PAYLOADS / "sentry_slack_blocks.json").read_text()
    values = {"SENTRY": sentry, "ISSUE_ID": issue_id, "SHORT_ID": short_id}
    for key, value in values.items():
        raw = raw.replace("{{" + key + "}}", value)
    return json.loads(raw)


async def post_alert(world: World, alert: dict[str, Any]) -> str:
    return await world.slack.post_message(
        CHANNEL, alert["text"], bot_id=alert["bot_id"], blocks=alert["blocks"]
    )


def buttons(message: dict[str, Any]) -> list[str]:
    """The buttons of one of Fixbot's messages (Sentry's alerts have their own)."""
    if message.get("bot_id") != "BFIXBOT":
        return []
    return labels(message.get("blocks", []))


def labels(blocks: list[dict[str, Any]]) -> list[str]:
    """The buttons' labels in these blocks."""
    return [
        element["text"]["text"]
        for block in blocks
        if block["type"] == "actions"
        for element in block["elements"]
    ]


def plan_script(world: World, *, ref: str = "SHOP-1", first: Any = None) -> None:
    worktree = world.worktree(branch_name(ref, TITLE))
    turns = [
        [tool("Read", {"file_path": str(worktree / "shop" / "pricing.py")})],
        *([first] if first is not None else []),
        [structured(plan_data())],
    ]
    world.model.script(turns, match=f"Plan a fix for {ref}")


async def wait_for_question(world: World, thread_ts: str) -> None:
    """Until the planning agent's question is in the thread."""
    await world.slack.wait_for(
        lambda: "The agent asks" in thread_texts(world, thread_ts), what="the question", timeout=60
    )


async def wait_for_plan(world: World, thread_ts: str, version: int = 1) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next(
            (
                m
                for m in world.slack.thread(CHANNEL, thread_ts)
                if buttons(m) and f"Plan v{version}" in json.dumps(m.get("blocks"))
            ),
            None,
        )

    return await world.slack.wait_for(find, timeout=60, what=f"plan v{version}")


def thread_texts(world: World, thread_ts: str) -> str:
    return "\n".join(m.get("text", "") for m in world.slack.thread(CHANNEL, thread_ts))


def db(world: World) -> sqlite3.Connection:
    return sqlite3.connect(world.root / "fixbot.db")


async def start_fix(world: World) -> str:
    await world.slack.slash_command("SHOP-1")
    parent = await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1])
    return str(parent[0]["ts"])


class KeptThreads(MemoryThreads):
    """`MemoryThreads` that also keeps each message's blocks (its buttons, its links), and
    lets a test wait until a thread says something."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: dict[str, list[dict[str, Any]]] = {}
        self._changed = asyncio.Condition()

    async def post(self, channel: str, message: Message, *, thread_ts: str | None = None) -> str:
        ts = await super().post(channel, message, thread_ts=thread_ts)
        await self._keep(ts, message)
        return ts

    async def update(self, channel: str, ts: str, message: Message) -> None:
        await super().update(channel, ts, message)
        await self._keep(ts, message)

    async def _keep(self, ts: str, message: Message) -> None:
        self.blocks[ts] = message.blocks
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, thread_ts: str, text: str) -> None:
        """Until a message of the thread says `text` (pytest's timeout bounds a stuck test)."""
        async with self._changed:
            await self._changed.wait_for(lambda: any(text in t for t in self.texts(thread_ts)))

    def offers(self, thread_ts: str) -> list[str]:
        """The ts of the thread's messages whose one button is `Plan a fix`."""
        return [
            m.ts for m in self.texts_of(thread_ts) if labels(self.blocks[m.ts]) == ["Plan a fix"]
        ]


def slack_alert(ts: str, issue_id: str = "142") -> dict[str, Any]:
    """Sentry's alert message in the alert channel, posted at `ts`."""
    return {**alert_payload("https://sentry.io", issue_id), "channel": CHANNEL, "ts": ts}


# Alerts


async def test_a_sentry_alert_offers_a_fix_and_the_button_plans_it(world: World) -> None:
    issue_id = seed_sentry_issue(world)
    plan_script(world)
    await world.start_app()

    alert_ts = await post_alert(world, sentry_alert(world, issue_id))
    offer = await world.slack.wait_for(
        lambda: next((m for m in world.slack.thread(CHANNEL, alert_ts) if buttons(m)), None),
        timeout=60,
        what="the Plan a fix offer",
    )
    assert buttons(offer) == ["Plan a fix"]
    assert len(world.slack.messages(CHANNEL)) == 1  # everything else is in the alert's thread

    await world.slack.click_button(CHANNEL, offer["ts"], "plan_alert", user="U_BOB")
    plan = await wait_for_plan(world, alert_ts)
    assert buttons(plan)[:2] == ["Approve", "Reject"]
    await world.slack.wait_for(  # the offer's update may land after the plan on a busy machine
        lambda: "Planning started by <@U_BOB>" in json.dumps(world.slack.thread(CHANNEL, alert_ts)),
        what="the offer saying who started the planning",
    )

    assert db(world).execute("select count(*) from tasks").fetchone() == (1,)


async def test_an_alert_storm_is_one_task_with_a_count(tmp_path: Path) -> None:
    threads = KeptThreads()
    async with build_machine(tmp_path, threads=threads, alert_channels=[CHANNEL]) as machine:
        conversation = machine.conversation
        first = "1.000001"
        alert = conversation.alert_in(slack_alert(first))
        assert alert is not None
        await conversation.on_alert(alert, channel=CHANNEL, message_ts=first)
        repeats = [f"2.{n:06d}" for n in range(49)]
        await asyncio.gather(  # as a storm arrives: the repeats all at once
            *(conversation.on_alert(alert, channel=CHANNEL, message_ts=ts) for ts in repeats)
        )

        async with machine.sessions() as session:
            counted = (await session.execute(select(Alert.count, Alert.sentry_issue))).all()
            assert [tuple(row) for row in counted] == [(50, "142")]
            assert await session.scalar(select(Task.id)) is None  # offered, not started
        await threads.wait_for(first, "Seen again (49)")  # the note is coalesced for ~1 s
        assert [t for t in threads.texts(first) if "Seen again" in t] == [
            ":repeat: Seen again (49)"
        ]
        assert len(threads.offers(first)) == 1
        # The repeats got no replies of their own.
        assert all(threads.texts(ts) == [] for ts in repeats)


async def test_auto_plan_starts_at_once_and_other_bots_are_ignored(tmp_path: Path) -> None:
    threads = KeptThreads()
    async with build_machine(
        tmp_path, threads=threads, auto_plan=True, alert_channels=[CHANNEL]
    ) as machine:
        conversation = machine.conversation
        chatter = {"channel": CHANNEL, "ts": "1.000001", "bot_id": "B_CI"}
        assert conversation.alert_in({**chatter, "text": "<!channel> deploy done"}) is None

        alert_ts = "1.000002"
        alert = conversation.alert_in(slack_alert(alert_ts))
        assert alert is not None
        task = await conversation.on_alert(alert, channel=CHANNEL, message_ts=alert_ts)
        # No offer to click: the task lives in the alert's thread and its planning is queued.
        assert task is not None and (task.thread_ts, task.state) == (alert_ts, State.QUEUED)
        assert task.requested_by is None and threads.offers(alert_ts) == []
        assert [m.thread_ts for m in threads.messages.values()] == [alert_ts]  # the parent
        job = await machine.queue.claim([JobKind.PLANNING])
        assert job is not None and job.task_id == task.id
        assert machine.jobs.wakes == 1  # a worker is woken at once


async def test_a_regression_links_the_earlier_pull_request(tmp_path: Path) -> None:
    threads = KeptThreads()
    async with build_machine(tmp_path, threads=threads, alert_channels=[CHANNEL]) as machine:
        conversation = machine.conversation
        first, again = "1.000001", "1.000002"
        alert = conversation.alert_in(slack_alert(first))
        assert alert is not None
        await conversation.on_alert(alert, channel=CHANNEL, message_ts=first)
        async with machine.sessions.begin() as session:  # Fixbot fixed the issue before
            fixed = Task(
                state=State.DONE,
                ref_kind=RefKind.SENTRY,
                ref_key="SHOP-1",
                title="t",
                channel_id=CHANNEL,
                thread_ts=first,
                pr_url="https://github.com/acme/shop/pull/7",
            )
            session.add(fixed)
            await session.flush()
            await session.execute(update(Alert).values(task_id=fixed.id))

        await conversation.on_alert(alert, channel=CHANNEL, message_ts=again)
        [offer] = threads.offers(again)
        assert "pull/7" in json.dumps(threads.blocks[offer])


# Questions


async def test_an_unanswered_question_lets_the_agent_carry_on(tmp_path: Path) -> None:
    async with build_machine(tmp_path, question_timeout_s=0.01) as machine:
        task = await planned(machine)
        # The ask tool the planning step was given, called as Claude Code calls it.
        ask = machine.agent.steps[-1].mcp_servers[SERVER]["instance"]
        async with Client(ask) as client:
            result = await client.call_tool("ask_in_thread", {"question": "Which currency?"})
        assert not result.is_error
        assert [block.text for block in result.content] == [NO_ANSWER]
        texts = machine.threads.texts(task.thread_ts)
        asked = next(i for i, t in enumerate(texts) if "The agent asks: Which currency?" in t)
        assert "No answer in time" in texts[asked + 1]
        # Closed: a reply now is feedback for the plan, not a late answer.
        assert not await machine.workflow.questions.answer(task, "U_BOB", "Euros.")


# Mentions


async def test_mention_commands_in_a_task_thread(world: World) -> None:
    seed_sentry_issue(world)
    plan_script(world)
    world.config["approvers"] = ["U_BOB"]
    await world.start_app()
    thread_ts = await start_fix(world)
    plan = await wait_for_plan(world, thread_ts)

    await world.slack.mention(CHANNEL, "help", thread_ts=thread_ts)
    await world.slack.wait_for(
        lambda: any("approve" in e["text"] for e in world.slack.ephemerals("U_ALICE"))
    )
    await world.slack.mention(CHANNEL, "status", thread_ts=thread_ts)
    await world.slack.wait_for(
        lambda: "waiting for approval" in thread_texts(world, thread_ts), what="status"
    )
    await world.slack.mention(CHANNEL, "approve", thread_ts=thread_ts, user="U_ALICE")
    await world.slack.wait_for(
        lambda: any("Only the approvers" in e["text"] for e in world.slack.ephemerals("U_ALICE")),
        what="the refusal",
    )
    await world.slack.mention(CHANNEL, "reject", thread_ts=thread_ts, user="U_BOB")
    await world.slack.wait_for(
        lambda: "Rejected by <@U_BOB>" in json.dumps(world.slack.thread(CHANNEL, thread_ts)),
        what="the rejection",
    )
    decided = next(m for m in world.slack.thread(CHANNEL, thread_ts) if m["ts"] == plan["ts"])
    assert buttons(decided) == []
    await world.slack.mention(CHANNEL, "approve", thread_ts=thread_ts, user="U_BOB")
    await world.slack.wait_for(
        lambda: any("already rejected" in e["text"] for e in world.slack.ephemerals("U_BOB"))
    )


async def test_mention_fix_starts_a_task_from_the_thread_and_cancel_stops_it(world: World) -> None:
    await world.start_app()
    root = await world.slack.post_message(
        CHANNEL, "Checkout shows a negative total with a 150% coupon", user="U_CAROL"
    )
    await world.slack.reply_in_thread(CHANNEL, root, "happens since Monday", user="U_DAVE")
    await world.slack.mention(CHANNEL, "fix", thread_ts=root, user="U_CAROL")
    await world.slack.wait_for(
        lambda: "Queued" in thread_texts(world, root) or "Planning" in thread_texts(world, root),
        what="the task in the thread",
    )
    row = db(world).execute("select ref_kind, repo, context, title from tasks").fetchone()
    assert row[0] == "text" and row[1] == "acme/shop"
    await world.slack.mention(CHANNEL, "cancel", thread_ts=root, user="U_CAROL")
    await world.slack.wait_for(
        lambda: "Cancelled by <@U_CAROL>" in thread_texts(world, root), what="the cancel"
    )


async def test_mention_retry_runs_a_failed_step_again(world: World) -> None:
    # A repository that cannot be cloned yet: planning fails and offers Retry.
    gone = world.root / "gone.git"
    world.config["repos"].append({"name": "acme/gone", "clone_url": gone.as_uri()})
    world.model.script([[structured(plan_data())]], match="in the repository acme/gone")
    await world.start_app()
    await world.slack.slash_command("checkout is broken repo:acme/gone")
    parent = (await world.slack.wait_for(lambda: world.slack.messages(CHANNEL)[:1]))[0]
    await world.slack.wait_for(
        lambda: any("Retry" in buttons(m) for m in world.slack.thread(CHANNEL, parent["ts"])),
        what="the failure",
    )
    # The repository is there now: the step run again gets through to a plan.
    git("clone", "-q", "--bare", str(world.origin), str(gone), cwd=world.root)
    world.github.add_repo("acme/gone", gone)

    await world.slack.mention(CHANNEL, "retry", thread_ts=parent["ts"])

    await world.slack.wait_for(
        lambda: "Retry requested by <@U_ALICE>" in thread_texts(world, parent["ts"])
    )
    await wait_for_plan(world, parent["ts"])
    assert db(world).execute("select kind from jobs").fetchall() == [("planning",)] * 2
    assert world.model.unexpected == []

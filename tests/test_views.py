"""Block Kit views: content, exact buttons, escaping, and Slack's limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from agents.plan import Plan
from bot.dashboard import TaskSummary
from bot.models import State
from bot.views import (
    Message,
    came_back,
    decision_note,
    done_message,
    ended_message,
    escape,
    failure_message,
    fix_held,
    fix_not_held,
    fmt_cost,
    fmt_duration,
    fmt_window,
    link,
    parent_message,
    plan_decided,
    plan_message,
    pull_request_body,
    queued_message,
    revising_message,
    status_message,
    unmapped_project_message,
)

EVIL = "<!channel> pay <http://evil.example|click here> <@U999> & <!here>"


def make_task(**changes: Any) -> TaskSummary:
    fields: dict[str, Any] = {
        "id": 7,
        "state": State.PLANNING.value,
        "ref_kind": "sentry",
        "ref_key": "SHOP-1A",
        "ref_url": "https://sentry.io/organizations/acme/issues/1/",
        "title": "ZeroDivisionError: division by zero in discount()",
        "repo": "acme/shop",
        "failure": None,
        "channel_id": "C1",
        "thread_ts": "1700000000.000100",
        "requested_by": "U1",
        "plan_version": 2,
        "cost_usd": 0.31,
        "pr_url": None,
        "created_at": datetime(2024, 5, 1, 14, 0, tzinfo=UTC),
        "since": datetime(2024, 5, 1, 14, 0, tzinfo=UTC),
    }
    fields.update(changes)
    return TaskSummary(**fields)


def make_plan(**changes: Any) -> Plan:
    fields: dict[str, Any] = {
        "summary": "discount() divides by the item count, which is 0 for an empty cart.",
        "root_cause": "shop/pricing.py:42 divides by len(items) without a guard.",
        "evidence": ["shop/pricing.py:42"],
        "files": ["shop/pricing.py", "tests/test_pricing.py"],
        "test_plan": "tests/test_pricing.py::test_empty_cart_discount expects 0.",
        "change": "Return 0 when the cart is empty.",
        "risk": "Low: one branch.",
    }
    fields.update(changes)
    return Plan(**fields)


def all_text(message: Message) -> str:
    return message.text + "\n" + json.dumps(message.blocks, ensure_ascii=False)


def mrkdwn_texts(blocks: list[dict[str, Any]]) -> list[str]:
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "text" and isinstance(item, str):
                    found.append(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(blocks)
    return found


def assert_within_limits(message: Message) -> None:
    assert 0 < len(message.blocks) <= 50
    assert len(message.text) <= 4000
    for block in message.blocks:
        if block["type"] == "section":
            assert len(block["text"]["text"]) <= 3000
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= 150
        if block["type"] == "context":
            assert all(len(e["text"]) <= 3000 for e in block["elements"])
        if block["type"] == "actions":
            assert all(len(e["text"]["text"]) <= 75 for e in block["elements"])


def buttons(message: Message) -> list[dict[str, Any]]:
    return [e for b in message.blocks if b["type"] == "actions" for e in b["elements"]]


def every_message() -> list[Message]:
    task, plan = make_task(title=EVIL), make_plan(root_cause="x" * 10_000)
    now = datetime(2024, 5, 1, 14, 3, tzinfo=UTC)
    return [
        parent_message(task),
        status_message("Planning", "Reading shop/pricing.py", 42, 0.12),
        queued_message(3),
        plan_message(task, plan, plan_url="https://example.com/plan", cost_usd=0.31),
        plan_decided(
            task, plan, plan_url=None, cost_usd=1, note=decision_note("approved", "U1", now)
        ),
        failure_message(task, EVIL, output="line\n" * 5000),
        done_message(
            task,
            pr_url="https://github.com/acme/shop/pull/12",
            red_excerpt="F" * 10_000,
            green_excerpt=".",
            cost_usd=1.2,
            duration_s=600,
        ),
        ended_message("Rejected."),
        unmapped_project_message("shop-backend"),
    ]


# ---------------------------------------------------------------------------- helpers


def test_escape_and_link() -> None:
    assert escape("<!channel> a&b > c") == "&lt;!channel&gt; a&amp;b &gt; c"
    assert link("https://x.test/a?b=1&c=2", "see <this>") == (
        "<https://x.test/a?b=1&amp;c=2|see &lt;this&gt;>"
    )
    assert link("javascript:alert(1)", "click") == "click"
    assert link("slack://channel?id=C1", "<!here>") == "&lt;!here&gt;"
    assert link("https://x.test/a|b>c", "l") == "<https://x.test/a%7Cb%3Ec|l>"


def test_formatting() -> None:
    assert fmt_duration(63) == "1:03"
    assert fmt_duration(3723) == "1:02:03"
    assert fmt_duration(0) == "0:00"
    assert fmt_duration(59.6) == "1:00"
    assert fmt_cost(0.314) == "$0.31"
    assert fmt_cost(12) == "$12.00"


# ---------------------------------------------------------------------------- messages


def test_parent_message() -> None:
    message = parent_message(make_task())
    text = all_text(message)
    assert "ZeroDivisionError: division by zero in discount()" in text
    assert "<https://sentry.io/organizations/acme/issues/1/|SHOP-1A>" in text
    assert "acme/shop" in text
    assert ":hourglass: Planning" in text


def test_parent_message_states_and_pull_request() -> None:
    done = parent_message(
        make_task(state="done", pr_url="https://github.com/acme/shop/pull/12", ref_url=None)
    )
    text = all_text(done)
    assert ":white_check_mark: Pull request opened" in text
    assert "<https://github.com/acme/shop/pull/12|" in text
    assert "SHOP-1A" in text and "<https://sentry" not in text
    failed = parent_message(make_task(state="failed", failure="tests never went red"))
    assert ":x: Failed: tests never went red" in all_text(failed)


def test_untrusted_text_cannot_ping_or_forge_links() -> None:
    for message in (
        parent_message(make_task(title=EVIL)),
        plan_message(make_task(title=EVIL), make_plan(summary=EVIL), plan_url=None, cost_usd=0),
        failure_message(make_task(title=EVIL), EVIL, output=EVIL),
        status_message(EVIL, EVIL, 1, 0),
        revising_message("U_BOB", EVIL),  # a reply, echoed in the thread
    ):
        text = all_text(message)
        for raw in ("<!channel>", "<!here>", "<@U999>", "<http://evil.example|click here>"):
            assert raw not in text
        assert "&lt;!channel&gt;" in text
        assert "&lt;http://evil.example|click here&gt;" in text
        for block in message.blocks:
            if "text" in block and block["text"].get("type") == "mrkdwn":
                assert block["text"]["verbatim"] is True


def test_status_message() -> None:
    running = status_message("Planning", "Reading shop/pricing.py", 42, 0.12)
    assert running.text == ":gear: Planning — Reading shop/pricing.py · 0:42 · $0.12"
    assert running.blocks[0]["type"] == "context"
    done = status_message("Planning", "", 63, 0.31, done=True)
    assert done.text == ":white_check_mark: Planning finished in 1:03 · $0.31"
    timed_out = status_message("Execution", "", 2700, 2.5, done=True, outcome="timed out")
    assert "Execution timed out after 45:00 · $2.50" in timed_out.text
    failed = status_message("Planning", "", 5, 0, done=True, outcome="failed")
    assert failed.text.startswith(":x: Planning failed")


def test_queued_message() -> None:
    assert "Queued, 3 ahead" in queued_message(3).text
    assert "Queued, next up" in queued_message(0).text


def test_plan_message_content_and_buttons() -> None:
    task = make_task(state="awaiting_approval")
    message = plan_message(task, make_plan(), plan_url="https://x.test/PLAN.md", cost_usd=0.31)
    header = message.blocks[0]
    assert header == {
        "type": "header",
        "text": {"type": "plain_text", "text": "Plan v2", "emoji": True},
    }
    text = all_text(message)
    for part in ("empty cart", "*Root cause*", "`shop/pricing.py`", "`tests/test_pricing.py`"):
        assert part in text
    for part in ("*Test plan*", "*Change*", "Return 0", "*Risk*", "Spent so far: $0.31"):
        assert part in text
    assert "Full plan: <https://x.test/PLAN.md|PLAN.md>" in text
    actions = message.blocks[-1]
    assert actions["type"] == "actions"
    assert actions["block_id"] == "plan:7:2"
    approve, reject = actions["elements"]
    assert approve["text"]["text"] == "Approve"
    assert approve["action_id"] == "approve"
    assert approve["style"] == "primary"
    assert approve["value"] == "7:2"
    assert reject["text"]["text"] == "Reject"
    assert reject["action_id"] == "reject"
    assert reject["style"] == "danger"
    assert reject["value"] == "7:2"
    assert "Full plan" not in all_text(plan_message(task, make_plan(), plan_url=None, cost_usd=0))


def test_long_root_cause_is_truncated_and_says_where_the_rest_is() -> None:
    plan = make_plan(root_cause="<" + "x" * 9_999)
    message = plan_message(make_task(), plan, plan_url="https://x.test/PLAN.md", cost_usd=0)
    [section] = [
        b for b in message.blocks if b["type"] == "section" and "Root cause" in b["text"]["text"]
    ]
    body = section["text"]["text"]
    assert len(body) <= 3000
    assert body.startswith("*Root cause*\n&lt;xxx")
    assert "…" in body
    assert "<https://x.test/PLAN.md|PLAN.md>" in body
    assert_within_limits(message)


def test_plan_decided_replaces_buttons_with_note() -> None:
    task, plan = make_task(), make_plan()
    at = datetime(2024, 5, 1, 16, 3, tzinfo=timezone(timedelta(hours=2)))
    note = decision_note("approved", "U1", at)
    assert note == ":white_check_mark: Approved by <@U1> at 14:03 UTC"
    message = plan_decided(task, plan, plan_url=None, cost_usd=0.31, note=note)
    assert buttons(message) == []
    assert message.blocks[-1] == {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": note, "verbatim": True}],
    }
    before = plan_message(task, plan, plan_url=None, cost_usd=0.31)
    assert before.blocks[:-1] == message.blocks[:-2]


def test_decision_notes() -> None:
    at = datetime(2024, 5, 1, 9, 5)
    assert decision_note("rejected", "U2", at) == ":no_entry: Rejected by <@U2> at 09:05 UTC"
    assert decision_note("superseded", None, at).startswith(
        ":arrows_counterclockwise: Superseded by a revised plan"
    )
    assert decision_note("expired", None, at).startswith(":hourglass: Expired")
    assert "<!channel>" not in decision_note("approved", "<!channel>", at)


def test_failure_message() -> None:
    task = make_task(state="failed")
    output = "\n".join(f"line {i}" for i in range(2000)) + "\nAssertionError: <boom>"
    message = failure_message(task, "The new test passed before the fix.", output=output)
    text = all_text(message)
    assert "The new test passed before the fix." in text
    assert "AssertionError: &lt;boom&gt;" in text
    assert "line 0\n" not in text
    assert "```" in text
    retry, cancel = buttons(message)
    assert (retry["text"]["text"], retry["action_id"], retry["value"]) == ("Retry", "retry", "7")
    assert (cancel["text"]["text"], cancel["action_id"], cancel["value"]) == (
        "Cancel",
        "cancel",
        "7",
    )
    assert_within_limits(message)
    assert len(failure_message(task, "timed out").blocks) == 2


def test_code_blocks_cannot_be_closed_by_output() -> None:
    message = failure_message(make_task(), "x", output="a\n```\n<!channel>\n```")
    [code] = [t for t in mrkdwn_texts(message.blocks) if t.startswith("```")]
    assert code.count("```") == 2


def test_done_message() -> None:
    message = done_message(
        make_task(state="done"),
        pr_url="https://github.com/acme/shop/pull/12",
        red_excerpt="FAILED tests/test_pricing.py::test_empty_cart - ZeroDivisionError",
        green_excerpt="1 passed in 0.02s",
        cost_usd=1.234,
        duration_s=754,
    )
    text = all_text(message)
    pr = "<https://github.com/acme/shop/pull/12|https://github.com/acme/shop/pull/12>"
    assert f"Pull request ready: {pr}" in text
    assert message.text.startswith("Pull request ready: https://github.com/acme/shop/pull/12")
    assert "FAILED tests/test_pricing.py::test_empty_cart" in text
    assert "1 passed in 0.02s" in text
    assert "$1.23" in text and "12:34" in text
    assert buttons(message) == []


def test_ended_and_unmapped_messages() -> None:
    assert "Rejected by <@U1>." in all_text(ended_message("Rejected by <@U1>."))
    message = unmapped_project_message("shop-backend")
    text = all_text(message)
    assert "`shop-backend`" in text
    assert "repos:" in text and "name: owner/name" in text
    assert "sentry_projects: [shop-backend]" in text
    assert "fixbot.yml" in text
    assert "<!channel>" not in all_text(unmapped_project_message("<!channel>"))


@pytest.mark.parametrize("index", range(9))
def test_every_message_is_within_slack_limits(index: int) -> None:
    assert_within_limits(every_message()[index])


def test_pull_request_body_ready_and_draft() -> None:
    task, plan = make_task(), make_plan()
    body = pull_request_body(
        task,
        plan,
        thread_url="https://acme.slack.com/archives/C1/p1700000000000100",
        red="FAILED test_empty_cart\n```nested```",
        green="1 passed",
        cost_usd=0.31,
        duration_s=63,
    )
    for part in ("## Summary", "## Root cause", "## Plan", "## Verification", "Return 0"):
        assert part in body
    assert "tests/test_pricing.py::test_empty_cart_discount" in body and "Low: one branch." in body
    assert "````text\nFAILED test_empty_cart\n```nested```\n````" in body
    assert "```text\n1 passed\n```" in body
    assert "Spend: $0.31 · Time: 1:03" in body
    assert "[Slack thread](https://acme.slack.com/archives/C1/p1700000000000100)" in body
    assert "[SHOP-1A](https://sentry.io/organizations/acme/issues/1/)" in body

    draft = pull_request_body(
        task, plan, thread_url=None, red=None, green=None, cost_usd=0.1, duration_s=None
    )
    assert "## Verification" in draft and "Pending" in draft
    assert "```" not in draft
    assert "Spend: $0.10" in draft and "Time:" not in draft
    assert "Slack thread" not in draft


def test_after_merge_messages() -> None:
    assert [fmt_window(h) for h in (24, 1.5, 0.5, 0.005)] == ["24 h", "1.5 h", "30 min", "18 s"]
    held = fix_held("24 h", "since release `shop@1.0.1`", 14)
    assert held.text == (
        ":large_green_circle: No new events in 24 h since release `shop@1.0.1`: the fix held. "
        "(In the 24 h before the merge: 14.)"
    )
    not_held = fix_not_held(7, 100, "since the merge", "https://github.com/acme/shop/pull/3")
    assert "Still seen: 100+ events since the merge" in not_held.text
    actions = [b for b in not_held.blocks if b["type"] == "actions"]
    assert actions[0]["elements"][0]["action_id"] == "plan_again"
    assert actions[0]["elements"][0]["value"] == "7"
    back = came_back(7, "SHOP-1", "https://github.com/acme/shop/pull/3", regressed=True)
    assert "Sentry marks `SHOP-1` regressed" in back.text
    again = came_back(7, "SHOP-1", "https://github.com/acme/shop/pull/3", regressed=False)
    assert "A Sentry alert names `SHOP-1` again" in again.text

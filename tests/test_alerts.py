"""Recognising Sentry alerts: the formats Sentry's Slack integration posts, and webhooks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bot.alerts import recognise_message, recognise_webhook

PAYLOADS = Path(__file__).parent / "payloads"
SENTRY = "https://acme.sentry.io"


def payload(name: str, **values: str) -> Any:
    text = (PAYLOADS / name).read_text()
    for key, value in {"SENTRY": "https://sentry.io", **values}.items():
        text = text.replace("{{" + key + "}}", value)
    return json.loads(text)


def test_block_kit_alert() -> None:
    message = payload("sentry_slack_blocks.json", ISSUE_ID="142", SHORT_ID="SHOP-5")
    alert = recognise_message(message, sentry_url=SENTRY)
    assert alert is not None
    assert (alert.issue_id, alert.short_id, alert.project) == ("142", "SHOP-5", "shop-backend")
    assert alert.title == "AssertionError: discount made the price negative"
    assert alert.url == "https://sentry.io/organizations/acme/issues/142/"
    assert alert.key == "142" and alert.ref_key == "SHOP-5"


def test_legacy_attachment_alert() -> None:
    message = payload("sentry_slack_attachments.json", ISSUE_ID="142", SHORT_ID="SHOP-5")
    alert = recognise_message(message, sentry_url=SENTRY)
    assert alert is not None
    assert (alert.issue_id, alert.short_id) == ("142", "SHOP-5")
    assert alert.title == "AssertionError: discount made the price negative"
    assert alert.url == "https://sentry.io/organizations/acme/issues/142/"


def test_any_message_with_a_sentry_issue_url() -> None:
    pasted = {"text": "prod is on fire <https://acme.sentry.io/issues/7781/?referrer=slack>"}
    alert = recognise_message(pasted, sentry_url=SENTRY)
    assert alert is not None and alert.issue_id == "7781" and alert.short_id is None
    by_short_id = {"text": "see https://sentry.io/organizations/acme/issues/SHOP-1A/"}
    alert = recognise_message(by_short_id, sentry_url=SENTRY)
    assert alert is not None and alert.key == "SHOP-1A"


def test_messages_without_an_issue_are_not_alerts() -> None:
    for message in (
        {"text": "deploy finished"},
        {"text": "<https://github.com/acme/shop/pull/3>"},
        {"text": "https://sentry.io/organizations/acme/alerts/rules/"},
        {
            "blocks": [
                {
                    "type": "section",
                    "block_id": '{"issue": 1}',
                    "text": {"type": "mrkdwn", "text": "hi"},
                }
            ]
        },
    ):
        assert recognise_message(message, sentry_url=SENTRY) is None


def test_issue_webhook_created_and_regressed() -> None:
    created = payload("sentry_issue_created.json", ISSUE_ID="142", SHORT_ID="SHOP-5")
    alert = recognise_webhook("issue", created)
    assert alert is not None and alert.key == "142" and not alert.regressed
    assert alert.url == "https://sentry.io/organizations/acme/issues/142/"
    regressed = {**created, "action": "unresolved"}
    regressed["data"] = {"issue": {**created["data"]["issue"], "substatus": "regressed"}}
    alert = recognise_webhook("issue", regressed)
    assert alert is not None and alert.regressed
    resolved = {**created, "action": "resolved"}
    assert recognise_webhook("issue", resolved) is None
    assert recognise_webhook("installation", created) is None


def test_sentry_docs_webhook_examples() -> None:
    issue = payload("sentry/issue.created.json")
    alert = recognise_webhook("issue", issue)
    assert alert is not None
    assert (alert.key, alert.short_id, alert.project) == ("1170820242", "FRONT-END-9", "front-end")
    assert alert.title == "ReferenceError: blooopy is not defined"

    event_alert = recognise_webhook("event_alert", payload("sentry/event_alert.triggered.json"))
    assert event_alert is not None
    assert (event_alert.key, event_alert.ref_key, event_alert.level) == (
        "1117540176",
        "1117540176",
        "error",
    )
    assert event_alert.url == "https://sentry.io/organizations/test-org/issues/1117540176/"
    assert event_alert.title == "ReferenceError: heck is not defined"

    error = recognise_webhook("error", payload("sentry/error.created.json"))
    assert error is not None and error.key == "1170820242"
    assert error.url == "https://sentry.io/organizations/test-org/issues/1170820242/"

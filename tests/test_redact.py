"""The redaction filter: known secret values and token shapes become `[redacted]`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from fakes.slack import LocalSlack
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings
from bot.dashboard import TaskSummary
from bot.redact import REDACTED, WHOLE_WORD_BELOW, Redactor, redact_blocks
from bot.thread import SlackThreads
from bot.views import Message, failure_message, parent_message

redact = Redactor(["s3cr3t-value-from-settings", "short", ""])


@pytest.mark.parametrize(
    "secret",
    [
        "xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "xoxp-1234567890-abcdef",
        "xoxa-2-abcdefghijkl",
        "xoxs-1234-5678-abcdef",
        "xoxr-1234-5678-abcdef",
        "xoxo-1234-5678-abcdef",
        "xapp-1-A0123456789-1234567890123-abcdef0123456789",
        "ghp_" + "a1B2" * 9,
        "gho_" + "a1B2" * 9,
        "ghs_" + "a1B2" * 9,
        "ghu_" + "a1B2" * 9,
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789",
        "sk-ant-api03-AbCdEf_GhIjKl-MnOpQr0123456789",
        "AKIAIOSFODNN7EXAMPLE",
        "s3cr3t-value-from-settings",
    ],
)
def test_token_shapes_and_known_values_are_hidden(secret: str) -> None:
    text = f"failed with token {secret} while calling the API"
    out = redact(text)
    assert secret not in out
    assert out == f"failed with token {REDACTED} while calling the API"


def test_known_value_is_hidden_inside_other_text_and_url_encoded() -> None:
    out = redact("x=s3cr3t-value-from-settingsy and q=s3cr3t-value-from-settings")
    assert "s3cr3t" not in out
    value = "p@ss/word+secret"
    out = Redactor([value])(f"url?password=p%40ss%2Fword%2Bsecret and {value}")
    assert "p%40ss" not in out and value not in out


def test_short_values_are_hidden_where_they_stand_alone() -> None:
    assert redact("a short note, shorter") == f"a {REDACTED} note, shorter"
    out = Redactor(["Zq7", ""])("key=Zq7 and Zq7x and https://h/?t=Zq7")
    assert out == f"key={REDACTED} and Zq7x and https://h/?t={REDACTED}"


def test_a_secret_that_starts_with_a_shorter_one_is_hidden_whole() -> None:
    values = ["hunter22", "hunter22-and-the-rest-of-a-longer-secret", "pw9", "pw9-long-value"]
    for ordered in (values, values[::-1]):
        redactor = Redactor(ordered)
        out = redactor("a hunter22-and-the-rest-of-a-longer-secret b pw9-long-value c")
        assert out == f"a {REDACTED} b {REDACTED} c", ordered
    # Many such pairs, so no order of the values could hide them all by chance.
    pairs = [(f"prefix{n:02d}", f"prefix{n:02d}-with-a-longer-tail") for n in range(20)]
    redactor = Redactor(value for pair in pairs for value in pair)
    for short, long in pairs:
        assert redactor(f"<{long}> <{short}>") == f"<{REDACTED}> <{REDACTED}>"


def test_every_known_value_is_hidden_whatever_its_length_and_place() -> None:
    values = ["k1", "Zq7", "abcd", "short", "a-very-long-secret-value", "medium-1", "x" * 40, "pw"]
    for ordered in (values, sorted(values), sorted(values, key=len)):
        redactor = Redactor(ordered)
        for value in values:
            assert redactor(f"({value})") == f"({REDACTED})", (value, ordered)
            assert redactor.holds_secret_value(f"see {value}."), (value, ordered)


def test_every_secret_setting_is_a_known_value_including_the_database_password() -> None:
    settings = Settings(
        slack_bot_token="xoxb-1",
        slack_app_token="xapp-1",
        database_url="postgresql+asyncpg://fixbot:pw9@db/fixbot",
        github_webhook_secret="hk",
        sentry_webhook_secret="",
        jira_api_token="jira-api-token-value",
    )
    assert settings.sentry_webhook_secret is None  # empty counts as unset
    values = set(settings.secret_values())
    assert {"xoxb-1", "xapp-1", "pw9", "hk", "jira-api-token-value"} <= values
    redactor = Redactor(values)
    assert redactor.holds_secret_value("password pw9 in a file")
    assert not redactor.holds_secret_value("pw99 is another word")
    assert redactor("hk and xoxb-1") == f"{REDACTED} and {REDACTED}"


def test_bearer_and_authorization_values() -> None:
    assert redact("curl -H 'X: 1' Bearer abc.def-ghi_jkl") == f"curl -H 'X: 1' Bearer {REDACTED}"
    assert redact("Authorization: Basic dXNlcjpwYXNz") == f"Authorization: {REDACTED}"
    out = redact("headers={'Authorization': 'token abc123', 'Accept': 'json'}")
    assert out == f"headers={{'Authorization': '{REDACTED}', 'Accept': 'json'}}"
    out = redact('{"authorization": "Bearer abcdef"}')
    assert "abcdef" not in out


def test_url_credentials() -> None:
    out = redact("cloning https://x-access-token:abc123@github.com/acme/shop.git failed")
    assert out == f"cloning https://{REDACTED}@github.com/acme/shop.git failed"
    out = redact("DATABASE_URL=postgresql+asyncpg://fixbot:hunter22@db:5432/fixbot")
    assert "hunter22" not in out
    assert out.endswith(f"postgresql+asyncpg://{REDACTED}@db:5432/fixbot")
    # A password without a user name, as Redis URLs have it.
    out = redact("connecting to redis://:hunter2secret@cache:6379/0")
    assert out == f"connecting to redis://{REDACTED}@cache:6379/0"
    # A URL without credentials is left alone.
    assert redact("see https://sentry.io/issues/1/") == "see https://sentry.io/issues/1/"
    assert redact("http://host:8080/path@x") == "http://host:8080/path@x"


@pytest.mark.parametrize(
    "shortest",
    [
        "xoxb-abcdef",
        "xoxe.xoxp-abcdef",
        "xapp-abcdef",
        "ghp_" + "a" * 16,
        "github_pat_" + "a" * 16,
        "sk-ant-abcdefgh",
        "Bearer abcd",
        "authorization: abcd",
    ],
)
def test_the_shortest_token_of_each_shape_is_hidden(shortest: str) -> None:
    assert shortest.split()[-1] not in redact(f"({shortest})")


def test_a_value_of_the_whole_word_length_is_hidden_inside_words() -> None:
    value = "k" * WHOLE_WORD_BELOW
    assert Redactor([value])(f"x{value}y") == f"x{REDACTED}y"
    shorter = value[1:]
    assert Redactor([shorter])(f"x{shorter}y") == f"x{shorter}y"


def test_private_key_blocks() -> None:
    key = (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nAAAA\n"
        "-----END OPENSSH PRIVATE KEY-----"
    )
    assert redact(f"before\n{key}\nafter") == f"before\n{REDACTED}\nafter"
    cut_off = "log:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA"
    assert redact(cut_off) == f"log:\n{REDACTED}"


def test_ordinary_text_is_untouched() -> None:
    text = "ZeroDivisionError in shop/pricing.py:42 — discount(total=0) · ghp_ is a prefix"
    assert redact(text) == text


def test_redaction_is_idempotent() -> None:
    text = "Authorization: Bearer xoxb-123456-abcdef and https://u:p4ss@h/x"
    once = redact(text)
    assert redact(once) == once


def test_redact_blocks_walks_every_text_without_mutating() -> None:
    token = "xoxb-1234567890-abcdefghij"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Plan {token}"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"root cause {token}"}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": token}]},
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "action_id": "approve",
                    "value": "1:1",
                    "text": {"type": "plain_text", "text": "Approve"},
                }
            ],
        },
    ]
    out = redact_blocks(blocks, redact)
    assert token not in str(out)
    assert out[0]["text"]["text"] == f"Plan {REDACTED}"
    assert out[2]["elements"][0]["text"] == REDACTED
    assert out[3]["elements"][0]["text"]["text"] == "Approve"
    assert out[3]["elements"][0]["action_id"] == "approve"
    assert token in blocks[1]["text"]["text"]  # the input is not changed


def test_redact_blocks_keeps_slack_limits_when_text_grows() -> None:
    r = Redactor(["abcdef"])
    header = {"type": "header", "text": {"type": "plain_text", "text": "abcdef " * 21}}
    section = {"type": "section", "text": {"type": "mrkdwn", "text": "abcdef " * 428}}
    out = redact_blocks([header, section], r)
    assert len(out[0]["text"]["text"]) <= 150
    assert len(out[1]["text"]["text"]) <= 3000
    assert "abcdef" not in out[1]["text"]["text"]
    # Grown but within the limit: nothing is cut.
    short = {"type": "section", "text": {"type": "mrkdwn", "text": "see abcdef"}}
    assert redact_blocks([short], r)[0]["text"]["text"] == f"see {REDACTED}"


def test_views_messages_redact_through_one_call() -> None:
    token = "ghp_" + "Z9" * 18
    at = datetime(2024, 5, 1, tzinfo=UTC)
    task = TaskSummary(
        id=1,
        ref_kind="text",
        ref_key="pricing",
        ref_url=None,
        title=f"push failed with {token}",
        repo=None,
        state="failed",
        failure=None,
        channel_id="C1",
        thread_ts=None,
        requested_by=None,
        cost_usd=0.0,
        plan_version=0,
        pr_url=None,
        created_at=at,
        since=at,
    )
    for message in (
        parent_message(task),
        failure_message(task, "push refused", output=f"remote: {token}"),
    ):
        clean = message.redacted(redact)
        assert isinstance(clean, Message)
        assert token not in clean.text and token not in str(clean.blocks)
        assert token in str(message.blocks)


async def test_everything_posted_to_slack_is_redacted() -> None:
    """Each way the workflow reaches Slack: post, edit, ephemeral answer, upload, App Home."""
    secret = "s3cr3t-value-from-settings"
    token = "ghp_" + "Q7" * 18
    leaky = f"Traceback: {secret} and {token}"
    message = Message(
        text=leaky,
        blocks=[
            {"type": "header", "text": {"type": "plain_text", "text": leaky[:100]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": leaky}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": leaky}]},
        ],
    )
    async with LocalSlack() as slack:
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
        threads = SlackThreads(client, redact)
        ts = await threads.post("C_GENERAL", message)
        reply = await threads.post("C_GENERAL", message, thread_ts=ts)
        await threads.update("C_GENERAL", reply, message)
        await threads.ephemeral("C_GENERAL", "U_ALICE", leaky, thread_ts=ts)
        await threads.upload("C_GENERAL", ts, filename="log.txt", content=leaky, title="log")
        await threads.publish_home("U_ALICE", {"type": "home", "blocks": message.blocks})
        if client.session:
            await client.session.close()

        seen = json.dumps(
            [
                slack.calls,
                slack.thread("C_GENERAL", ts),
                slack.ephemerals(),
                slack.home_view("U_ALICE"),
            ]
        ) + "".join(upload.text for upload in slack.files.values())
        assert {method for method, _ in slack.calls} >= {
            "chat.postMessage",
            "chat.update",
            "chat.postEphemeral",
            "views.publish",
        }
        assert any(REDACTED in upload.text for upload in slack.files.values())
    assert secret not in seen and token not in seen
    assert f"Traceback: {REDACTED} and {REDACTED}" in seen

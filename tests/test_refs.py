"""References as people paste them: every form `/fix` and `@fixbot fix` take, in process.

The strings come from the vendors' own examples (tests/payloads/README.md says where):
Sentry's webhook docs, octokit's webhook payload examples (github.com and GitHub Enterprise
Server), and Sentry and Jira URLs as pasted in public repositories.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bot.config import Settings
from bot.errors import BadReference
from bot.models import Reference, RefKind
from bot.refs import names_a_reference, parse_reference, unwrap_slack
from repos.config import RepoConfig

PAYLOADS = Path(__file__).parent / "payloads"


def load(name: str) -> Any:
    return json.loads((PAYLOADS / name).read_text())


def settings(**values: Any) -> Settings:
    base: dict[str, Any] = {
        "slack_bot_token": "xoxb-test",
        "slack_app_token": "xapp-test",
        "sentry_url": "https://sentry.io",
        "sentry_auth_token": "sntrys-test",
        "sentry_org": "test-org",
        "github_api_url": "https://api.github.com",
        "jira_url": "https://softwiretech.atlassian.net",
        "jira_email": "bot@example.com",
        "jira_api_token": "jira-token",
        "repos": [
            RepoConfig(
                name="Codertocat/Hello-World",
                clone_url="file:///dev/null",
                sentry_projects=["front-end"],
                jira_projects=["VFB"],
            )
        ],
    }
    return Settings(_env_file=None, **{**base, **values})  # type: ignore[call-arg]


EVENT_ALERT = load("sentry/event_alert.triggered.json")["data"]["event"]
ISSUE = load("sentry/issue.created.json")["data"]["issue"]
GITHUB_ISSUE = load("github/issues.opened.json")["issue"]
GITHUB_PULL = load("github/pull_request.opened.json")["pull_request"]
GHES_ISSUE = load("github/ghes-35.issues.opened.json")["issue"]
GHES_PULL = load("github/ghes-35.pull_request.opened.json")["pull_request"]


@pytest.mark.parametrize(
    ("typed", "kind", "key"),
    [
        # Sentry short ids: project slugs with dashes (Sentry's docs' FRONT-END-9, and one
        # Sentry's own Seer wrote into a pull request), slugs that start with a digit.
        (ISSUE["shortId"], RefKind.SENTRY, "FRONT-END-9"),
        ("APPLE-MACOS-2ZT", RefKind.SENTRY, "APPLE-MACOS-2ZT"),
        ("python-django-1a2", RefKind.SENTRY, "PYTHON-DJANGO-1A2"),
        ("1PASSWORD-3", RefKind.SENTRY, "1PASSWORD-3"),
        (ISSUE["id"], RefKind.SENTRY, "1170820242"),
        # Sentry URLs: the event page a webhook names, the API URL, an org subdomain.
        (EVENT_ALERT["web_url"], RefKind.SENTRY, "1117540176"),
        (EVENT_ALERT["issue_url"], RefKind.SENTRY, "1117540176"),
        (
            "https://test-org.sentry.io/issues/7772965095/?seerDrawer=true",
            RefKind.SENTRY,
            "7772965095",
        ),
        ("<https://test-org.sentry.io/issues/123/|ReferenceError>", RefKind.SENTRY, "123"),
        ("<https://test-org.sentry.io/issues/123/>", RefKind.SENTRY, "123"),
        ("test-org.sentry.io/issues/123/", RefKind.SENTRY, "123"),
        ("https://test-org.sentry.io/issues/123/ broke checkout again", RefKind.SENTRY, "123"),
        # GitHub: issue and pull request pages, their REST URLs, the owner/name#N shorthand.
        (GITHUB_ISSUE["html_url"], RefKind.GITHUB, "Codertocat/Hello-World#1"),
        (GITHUB_ISSUE["url"], RefKind.GITHUB, "Codertocat/Hello-World#1"),
        (GITHUB_PULL["html_url"], RefKind.GITHUB, "Codertocat/Hello-World#2"),
        (GITHUB_PULL["url"], RefKind.GITHUB, "Codertocat/Hello-World#2"),
        (f"<{GITHUB_PULL['html_url']}/files|#2>", RefKind.GITHUB, "Codertocat/Hello-World#2"),
        ("Codertocat/Hello-World#1", RefKind.GITHUB, "Codertocat/Hello-World#1"),
        # Jira: a mapped key, the browse page, board and list links with selectedIssue.
        ("VFB-513", RefKind.JIRA, "VFB-513"),
        ("https://softwiretech.atlassian.net/browse/VFB-513", RefKind.JIRA, "VFB-513"),
        (
            "https://softwiretech.atlassian.net/jira/software/c/projects/VFB/boards/1130"
            "?selectedIssue=VFB-513",
            RefKind.JIRA,
            "VFB-513",
        ),
        (
            "<https://softwiretech.atlassian.net/jira/software/c/projects/VFB/list"
            "?selectedIssue=VFB-7&amp;view=detail|VFB-7>",
            RefKind.JIRA,
            "VFB-7",
        ),
        (
            "https://softwiretech.atlassian.net/jira/software/c/projects/VFB/issues/VFB-9",
            RefKind.JIRA,
            "VFB-9",
        ),
        # Free text names its repository.
        (
            "checkout total is negative repo:Codertocat/Hello-World",
            RefKind.TEXT,
            "checkout total is negative",
        ),
    ],
)
def test_forms_people_paste(typed: str, kind: RefKind, key: str) -> None:
    ref = parse_reference(typed, settings())
    assert (ref.kind, ref.key) == (kind, key)
    if kind in (RefKind.GITHUB, RefKind.JIRA, RefKind.TEXT):
        assert ref.repo == "Codertocat/Hello-World"


def test_github_enterprise_urls_are_on_the_api_host() -> None:
    enterprise = settings(github_api_url="https://octocoders.github.io/api/v3")
    for url in (GHES_ISSUE["html_url"], GHES_ISSUE["url"], GHES_PULL["html_url"], GHES_PULL["url"]):
        ref = parse_reference(url, enterprise)
        assert ref.kind == RefKind.GITHUB and ref.key.startswith("Codertocat/Hello-World#"), url
    with pytest.raises(BadReference, match=re.escape("octocoders.github.io")):
        parse_reference(GITHUB_ISSUE["html_url"], enterprise)


@pytest.mark.parametrize(
    ("typed", "words"),
    [
        ("https://evil.example/Codertocat/Hello-World/issues/1", "not on a Sentry, GitHub or Jira"),
        ("https://evil.example/organizations/test-org/issues/1/", "not on a Sentry"),
        ("https://sentry.io.evil.example/issues/1/", "not on a Sentry"),
        ("https://github.com/other/repo/issues/3", "not in fixbot.yml"),
        (
            "https://github.com/Codertocat/Hello-World/commits/main",
            "not an issue or a pull request",
        ),
        ("https://sentry.io/organizations/other-org/issues/1/", "organization `other-org`"),
        ("https://test-org.sentry.io/alerts/rules/", "not an issue"),
        (
            "https://softwiretech.atlassian.net/jira/software/c/projects/VFB/boards/1130",
            "names no issue",
        ),
        ("https://softwiretech.atlassian.net/browse/OPS-4", "`OPS` is not mapped"),
        ("hello world", "repo:owner/name"),
        ("broken checkout repo:Codertocat/Unknown", "not in fixbot.yml"),
        ("", "needs something to fix"),
    ],
)
def test_what_is_refused_and_why(typed: str, words: str) -> None:
    with pytest.raises(BadReference, match=re.escape(words)) as refused:
        parse_reference(typed, settings())
    # /fix answers with these words alone: each says what is accepted or what to set.
    said = str(refused.value)
    assert "Accepted forms" in said or "fixbot.yml" in said or "SENTRY_ORG" in said


def test_self_hosted_sentry_is_its_own_host_and_subdomains() -> None:
    self_hosted = settings(sentry_url="https://sentry.acme.test")
    assert parse_reference(
        "https://sentry.acme.test/test-org/front-end/issues/55/", self_hosted
    ) == (
        Reference(
            RefKind.SENTRY, "55", url="https://sentry.acme.test/test-org/front-end/issues/55/"
        )
    )
    with pytest.raises(BadReference, match="not on a Sentry"):
        parse_reference("https://test-org.sentry.io/issues/55/", self_hosted)


def test_unmapped_jira_key_is_a_sentry_lookup_only_when_sentry_is_set_up() -> None:
    # With Sentry the lookup decides (Sentry's short id, or the unmapped Jira project).
    assert parse_reference("OPS-4", settings()).kind == RefKind.SENTRY
    without_sentry = settings(sentry_auth_token=None)
    with pytest.raises(BadReference, match="`OPS` is not mapped"):
        parse_reference("OPS-4", without_sentry)


def test_slack_wrapping_is_taken_off() -> None:
    assert unwrap_slack("see <https://a.example/x?a=1&amp;b=2|the page> now") == (
        "see https://a.example/x?a=1&b=2 now"
    )
    assert unwrap_slack("<@U123> fix <https://a.example/y>") == "<@U123> fix https://a.example/y"


def test_mention_words_that_name_a_reference() -> None:
    assert names_a_reference("FRONT-END-9")
    assert names_a_reference("<https://test-org.sentry.io/issues/123/|ReferenceError>")
    assert names_a_reference("Codertocat/Hello-World#1")
    assert not names_a_reference("the cart is empty repo:Codertocat/Hello-World")  # the thread
    assert not names_a_reference("e-mail sending is broken")
    assert not names_a_reference("")

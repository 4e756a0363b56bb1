"""The Sentry, GitHub and Jira clients against their local fakes, over real HTTP."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fakes.github import FakeGitHub
from fakes.jira import FakeJira
from fakes.sentry import FakeSentry

from bot.integrations import IntegrationError
from bot.integrations.github import GitHubClient, graphql_url
from bot.integrations.jira import JiraClient, adf_to_text, text_to_adf
from bot.integrations.sentry import (
    ErrorContext,
    SentryClient,
    SentryEvent,
    SentryIssue,
    SentryIssueUrl,
    parse_issue_url,
)

SENTRY_TOKEN = "sntrys-test-token"
GITHUB_TOKEN = "ghp-test-token"
JIRA_EMAIL, JIRA_TOKEN = "fixbot@acme.test", "jira-test-token"

CART_FRAMES = [
    {
        "filename": "flask/app.py",
        "abs_path": "/venv/lib/python3.12/site-packages/flask/app.py",
        "module": "flask.app",
        "function": "dispatch_request",
        "lineno": 880,
        "in_app": False,
        "context_line": "return self.view_functions[rule.endpoint](**view_args)",
    },
    {
        "filename": "shop/cart.py",
        "abs_path": "/srv/shop/cart.py",
        "module": "shop.cart",
        "function": "average_price",
        "lineno": 42,
        "in_app": True,
        "pre_context": ["def average_price(items):", "    total = sum(i.price for i in items)"],
        "context_line": "    return total / len(items)",
        "post_context": ["", "def checkout(cart):"],
    },
]


# ---- worlds -------------------------------------------------------------------------------


@pytest.fixture
async def sentry() -> AsyncIterator[FakeSentry]:
    async with FakeSentry(token=SENTRY_TOKEN, org="acme") as fake:
        yield fake


@pytest.fixture
async def sentry_client(sentry: FakeSentry) -> AsyncIterator[SentryClient]:
    async with SentryClient(sentry.url, SENTRY_TOKEN, "acme") as client:
        yield client


@pytest.fixture
def shop_git(tmp_path: Path) -> Path:
    """A bare repo with `main`, a fix branch one commit ahead, and a branch with nothing new."""
    work, bare = tmp_path / "work", tmp_path / "shop.git"

    def git(*args: str, cwd: Path = work) -> None:
        identity = ["-c", "user.name=Test", "-c", "user.email=test@example.com"]
        subprocess.run(["git", *identity, *args], cwd=cwd, check=True, capture_output=True)

    work.mkdir()
    git("init", "-q", "-b", "main")
    (work / "cart.py").write_text("def average_price(items):\n    return 0\n")
    git("add", ".")
    git("commit", "-q", "-m", "Initial commit")
    git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    git("push", "-q", str(bare), "main", "main:refs/heads/nothing-new")
    git("checkout", "-q", "-b", "fixbot/shop-1")
    (work / "cart.py").write_text("def average_price(items):\n    return 1\n")
    git("commit", "-q", "-am", "Fix average price of an empty cart")
    git("push", "-q", str(bare), "fixbot/shop-1")
    return bare


@pytest.fixture
async def github(shop_git: Path) -> AsyncIterator[FakeGitHub]:
    async with FakeGitHub(token=GITHUB_TOKEN) as fake:
        fake.add_repo("acme/shop", shop_git, default_branch="main")
        yield fake


@pytest.fixture
async def github_client(github: FakeGitHub) -> AsyncIterator[GitHubClient]:
    async with GitHubClient(github.url, GITHUB_TOKEN) as client:
        yield client


@pytest.fixture
async def jira() -> AsyncIterator[FakeJira]:
    async with FakeJira(email=JIRA_EMAIL, token=JIRA_TOKEN) as fake:
        yield fake


@pytest.fixture
async def jira_client(jira: FakeJira) -> AsyncIterator[JiraClient]:
    async with JiraClient(jira.url, JIRA_EMAIL, JIRA_TOKEN) as client:
        yield client


# ---- Sentry -------------------------------------------------------------------------------


async def test_short_id_leads_to_an_error_context_for_the_prompt(
    sentry: FakeSentry, sentry_client: SentryClient
) -> None:
    issue_id = sentry.add_issue(
        short_id="SHOP-1",
        frames=CART_FRAMES,
        breadcrumbs=[{"category": "http", "message": f"GET /cart/{n}"} for n in range(15)],
        tags={"environment": "production"},
        count=12,
        user_count=3,
    )

    resolved = await sentry_client.resolve_short_id("SHOP-1")
    issue = await sentry_client.get_issue(resolved.group_id)
    event = await sentry_client.latest_event(resolved.group_id)
    text = ErrorContext(issue=issue, event=event).render(max_breadcrumbs=10)

    assert (resolved.group_id, resolved.project_slug) == (issue_id, "shop-backend")
    assert issue.short_id == "SHOP-1"
    assert (issue.count, issue.user_count, issue.level) == (12, 3, "error")
    assert issue.culprit == "shop.cart in average_price"
    assert issue.last_release == "1.0.0"
    assert event.exceptions[-1].frames[-1].pre_context[-1].startswith("    total = sum")
    assert "ZeroDivisionError: division by zero" in text
    assert "`shop/cart.py:42` in `average_price`" in text
    assert "> 42 |     return total / len(items)" in text
    assert text.index("shop/cart.py:42") < text.index("flask/app.py:880")
    assert "GET /cart/14" in text and "GET /cart/4" not in text
    assert "environment=production" in text
    assert all(r.headers["Authorization"] == f"Bearer {SENTRY_TOKEN}" for r in sentry.requests)


async def test_error_context_takes_a_short_id_or_a_numeric_id(
    sentry: FakeSentry, sentry_client: SentryClient
) -> None:
    issue_id = sentry.add_issue(short_id="SHOP-1A", frames=CART_FRAMES)

    by_short_id = await sentry_client.error_context("SHOP-1A")
    by_id = await sentry_client.error_context(issue_id)

    assert by_short_id.issue.id == by_id.issue.id == issue_id
    assert by_id.issue.permalink.endswith(f"/organizations/acme/issues/{issue_id}/")


async def test_sentry_refuses_a_bad_token_with_a_sentence_naming_the_setting(
    sentry: FakeSentry,
) -> None:
    sentry.add_issue(short_id="SHOP-1")
    async with SentryClient(sentry.url, "wrong", "acme") as client:
        with pytest.raises(IntegrationError) as caught:
            await client.resolve_short_id("SHOP-1")

    assert caught.value.service == "Sentry"
    assert caught.value.status == 401
    assert "SENTRY_AUTH_TOKEN" in str(caught.value)


async def test_unknown_short_id_is_a_clear_not_found(sentry_client: SentryClient) -> None:
    with pytest.raises(IntegrationError, match="short id SHOP-999 was not found") as caught:
        await sentry_client.resolve_short_id("SHOP-999")
    assert caught.value.status == 404


async def test_unreachable_sentry_is_an_integration_error() -> None:
    async with SentryClient("http://127.0.0.1:9", SENTRY_TOKEN, "acme", timeout=2) as client:
        with pytest.raises(IntegrationError, match="could not reach"):
            await client.get_issue("1")


def test_frames_read_in_the_sdk_form_too() -> None:
    event = SentryEvent.from_api(
        {
            "event_id": "abc",
            "exception": {
                "values": [{"type": "KeyError", "value": "'sku'", "stacktrace": {"frames": [
                    {"filename": "shop/stock.py", "lineno": 7, "in_app": True,
                     "context_line": "    return stock[sku]"},
                ]}}]
            },
            "breadcrumbs": {"values": [{"timestamp": 1700000000.0, "message": "loaded"}]},
            "tags": [["environment", "staging"]],
        }
    )  # fmt: skip

    frame = event.exceptions[0].frames[0]
    assert (frame.location, frame.in_app, frame.context_line) == (
        "shop/stock.py:7",
        True,
        "    return stock[sku]",
    )
    assert event.tags == {"environment": "staging"}
    assert event.breadcrumbs[0].message == "loaded"


PAYLOADS = Path(__file__).parent / "payloads" / "sentry"


def _payload(name: str) -> Any:
    return json.loads((PAYLOADS / name).read_text())


def test_a_crashed_threads_stack_reaches_the_prompt() -> None:
    # Sentry's own sample: the exception has no stack trace, the crashed thread has it.
    event = SentryEvent.from_api(_payload("event.crashed-thread.json"))
    issue = SentryIssue(id="1", short_id="RAILS-1", title="ActionView::Template::Error")

    text = ErrorContext(issue=issue, event=event).render()

    assert "`app/views/welcome/view_error.html.erb:1`" in text
    assert "> 1 | hey <%= foo %>" in text
    assert "puma (3.12.6) lib/puma/thread_pool.rb:135" in text


def test_threads_alone_and_flat_lists_are_read() -> None:
    crashed = _payload("event.crashed-thread.json")
    only_threads = {**crashed, "exception": None}
    event = SentryEvent.from_api(only_threads)
    assert [e.summary for e in event.exceptions] == ["Crashed thread: puma 004"]
    assert event.exceptions[0].frames[-1].in_app

    flat = SentryEvent.from_api({"event_id": "x", **_payload("exception.flat-list.json")})
    assert [e.summary for e in flat.exceptions] == ["Error: An error occurred"]


def test_chained_exceptions_are_all_in_the_prompt() -> None:
    event = SentryEvent.from_api({"event_id": "x", **_payload("exception.chained.json")})
    issue = SentryIssue(id="1", short_id="PY-1", title="ValueError: chained exception")

    text = ErrorContext(issue=issue, event=event).render()

    raised, cause = (
        text.index("- ValueError: chained exception"),
        text.index("- Exception: initial exception"),
    )
    assert raised < cause and "first cause" in text


def test_render_fences_source_that_contains_backticks() -> None:
    event = SentryEvent.from_api(
        {
            "eventID": "e1",
            "entries": [
                {
                    "type": "exception",
                    "data": {
                        "values": [
                            {
                                "type": "ValueError",
                                "value": "bad",
                                "stacktrace": {
                                    "frames": [
                                        {
                                            "filename": "doc.py",
                                            "lineNo": 3,
                                            "inApp": True,
                                            "context": [[3, 'x = "```"']],
                                        }
                                    ]
                                },
                            }
                        ]
                    },
                }
            ],
        }
    )
    issue = SentryIssue(id="1", short_id="DOC-1", title="ValueError: bad")

    text = ErrorContext(issue=issue, event=event).render()

    assert "   ````\n" in text
    assert '> 3 | x = "```"' in text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://acme.sentry.io/issues/123/",
            SentryIssueUrl(base_url="https://acme.sentry.io", org="acme", issue="123"),
        ),
        (
            "https://acme.sentry.io/issues/123/events/9f1c0b/?project=4",
            SentryIssueUrl(base_url="https://acme.sentry.io", org="acme", issue="123"),
        ),
        (
            "https://sentry.io/organizations/acme/issues/123/?project=1",
            SentryIssueUrl(base_url="https://sentry.io", org="acme", issue="123"),
        ),
        (
            "https://acme.sentry.io/issues/SHOP-1A/",
            SentryIssueUrl(base_url="https://acme.sentry.io", org="acme", issue="SHOP-1A"),
        ),
        ("https://github.com/acme/shop/issues/12", None),
        ("https://de.sentry.io/issues/123/", None),
        ("https://acme.sentry.io/issues/", None),
        ("https://acme.sentry.io/issues/not an id/", None),
        ("SHOP-1", None),
        ("ftp://sentry.io/organizations/acme/issues/1/", None),
        ("https://sentry.example.com/organizations/acme/issues/456/", None),
        ("https://sentry.io.example.com/organizations/acme/issues/456/", None),
    ],
)
def test_parse_issue_url(url: str, expected: SentryIssueUrl | None) -> None:
    assert parse_issue_url(url) == expected


def test_parse_issue_url_trusts_only_the_configured_host() -> None:
    url = "https://errors.acme.test/issues/55/"

    assert parse_issue_url(url) is None
    found = parse_issue_url(url, sentry_url="https://errors.acme.test")
    assert found is not None and (found.org, found.issue) == (None, "55")
    self_hosted = "http://sentry.internal:9000"
    assert parse_issue_url(
        "http://sentry.internal:9000/acme/shop-backend/issues/789/", sentry_url=self_hosted
    ) == SentryIssueUrl(base_url=self_hosted, org="acme", issue="789", project="shop-backend")
    assert parse_issue_url(
        "http://sentry.internal:9000/organizations/acme/issues/456/", sentry_url=self_hosted
    ) == SentryIssueUrl(base_url=self_hosted, org="acme", issue="456")
    assert parse_issue_url("https://acme.sentry.io/issues/1/", sentry_url=self_hosted) is None


# ---- GitHub -------------------------------------------------------------------------------


async def test_draft_pull_request_is_opened_found_and_made_ready(
    github: FakeGitHub, github_client: GitHubClient
) -> None:
    created = await github_client.create_pull_request(
        "acme",
        "shop",
        head="fixbot/shop-1",
        base="main",
        title="Fix SHOP-1: average price of an empty cart",
        body="Plan and test evidence.",
        draft=True,
    )
    found = await github_client.find_pull_request("acme", "shop", "fixbot/shop-1")
    ready = await github_client.mark_ready_for_review("acme", "shop", created.number)

    assert created.draft is True and (created.head, created.base) == ("fixbot/shop-1", "main")
    assert found is not None and found.number == created.number
    assert ready.draft is False
    [stored] = github.pulls("acme/shop")
    assert (stored.number, stored.draft, stored.state) == (created.number, False, "open")
    assert stored.html_url == created.html_url
    assert any(r.path == "/graphql" for r in github.requests)


async def test_ensure_pull_request_is_idempotent(
    github: FakeGitHub, github_client: GitHubClient
) -> None:
    first = await github_client.ensure_pull_request(
        "acme", "shop", head="fixbot/shop-1", base="main", title="Fix", body="v1"
    )
    again = await github_client.ensure_pull_request(
        "acme", "shop", head="fixbot/shop-1", base="main", title="Fix", body="v2"
    )

    assert again.number == first.number
    [stored] = github.pulls("acme/shop")
    assert stored.body == "v2"
    with pytest.raises(IntegrationError, match="already exists"):
        await github_client.create_pull_request(
            "acme", "shop", head="fixbot/shop-1", base="main", title="Fix", body=""
        )


async def test_no_pull_request_for_a_missing_or_empty_branch(
    github_client: GitHubClient,
) -> None:
    assert await github_client.find_pull_request("acme", "shop", "fixbot/nope") is None
    with pytest.raises(IntegrationError, match="HTTP 422") as caught:
        await github_client.create_pull_request(
            "acme", "shop", head="fixbot/nope", base="main", title="Fix", body=""
        )
    assert caught.value.status == 422
    with pytest.raises(IntegrationError, match="No commits between main and nothing-new"):
        await github_client.create_pull_request(
            "acme", "shop", head="nothing-new", base="main", title="Fix", body=""
        )


async def test_github_issue_comment_and_repository(
    github: FakeGitHub, github_client: GitHubClient
) -> None:
    number = github.add_issue("acme/shop", "Empty cart crashes", "Steps: …", labels=["bug"])

    issue = await github_client.get_issue("acme", "shop", number)
    comment = await github_client.create_issue_comment("acme", "shop", number, "On it.")
    repository = await github_client.get_repository("acme", "shop")

    assert (issue.title, issue.body, issue.labels) == ("Empty cart crashes", "Steps: …", ["bug"])
    assert comment.body == "On it."
    assert github.comments("acme/shop", number) == ["On it."]
    assert repository.default_branch == "main"
    assert await github_client.check() == "fixbot"
    headers = github.requests[-1].headers
    assert headers["Accept"] == "application/vnd.github+json"
    assert headers["X-GitHub-Api-Version"] == "2022-11-28"


async def test_github_enterprise_urls_reach_rest_and_graphql(github: FakeGitHub) -> None:
    async with GitHubClient(f"{github.url}/api/v3", GITHUB_TOKEN) as client:
        created = await client.create_pull_request(
            "acme", "shop", head="fixbot/shop-1", base="main", title="Fix", body="", draft=True
        )
        ready = await client.mark_ready_for_review("acme", "shop", created.number)

    assert client.graphql_url == f"{github.url}/api/graphql"
    assert ready.draft is False and github.pulls("acme/shop")[0].draft is False


async def test_github_bad_token_and_unknown_repository(github: FakeGitHub) -> None:
    async with GitHubClient(github.url, "wrong") as client:
        with pytest.raises(IntegrationError, match="GITHUB_TOKEN") as caught:
            await client.get_repository("acme", "shop")
    assert (caught.value.service, caught.value.status) == ("GitHub", 401)

    async with GitHubClient(github.url, GITHUB_TOKEN) as client:
        with pytest.raises(IntegrationError, match="repository acme/nope was not found"):
            await client.get_repository("acme", "nope")


@pytest.mark.parametrize(
    ("api_url", "expected"),
    [
        ("https://api.github.com", "https://api.github.com/graphql"),
        ("https://api.github.com/", "https://api.github.com/graphql"),
        ("https://ghe.acme.test/api/v3", "https://ghe.acme.test/api/graphql"),
        ("https://ghe.acme.test/api/v3/", "https://ghe.acme.test/api/graphql"),
    ],
)
def test_graphql_url(api_url: str, expected: str) -> None:
    assert graphql_url(api_url) == expected


# ---- Jira ---------------------------------------------------------------------------------


async def test_jira_issue_comment_and_transition(jira: FakeJira, jira_client: JiraClient) -> None:
    jira.add_issue(
        "SHOP-42",
        "Cart total crashes",
        description="Open an empty cart.\n\nIt crashes.",
        labels=["sentry"],
    )

    issue = await jira_client.get_issue("SHOP-42")
    await jira_client.add_comment("SHOP-42", "Fixbot opened a pull request:\nhttps://x.test/pr/1")
    moved = await jira_client.transition("SHOP-42", "in progress")

    assert issue.summary == "Cart total crashes"
    assert issue.description == "Open an empty cart.\n\nIt crashes."
    assert (issue.labels, issue.status) == (["sentry"], "To Do")
    assert issue.url == f"{jira.url}/browse/SHOP-42"
    [comment] = jira.issue("SHOP-42").comments
    assert comment["type"] == "doc"
    assert adf_to_text(comment) == "Fixbot opened a pull request:\nhttps://x.test/pr/1"
    assert moved.name == "In Progress"
    assert jira.issue("SHOP-42").status == "In Progress"


async def test_jira_unknown_transition_lists_the_ones_it_has(
    jira: FakeJira, jira_client: JiraClient
) -> None:
    jira.add_issue("SHOP-42", "Cart total crashes")

    with pytest.raises(IntegrationError, match=r"no transition named 'Shipped'.*In Progress, Done"):
        await jira_client.transition("SHOP-42", "Shipped")
    assert jira.issue("SHOP-42").status == "To Do"


async def test_jira_bad_credentials_and_unknown_issue(jira: FakeJira) -> None:
    async with JiraClient(jira.url, JIRA_EMAIL, "wrong") as client:
        with pytest.raises(IntegrationError, match="JIRA_EMAIL and JIRA_API_TOKEN") as caught:
            await client.get_issue("SHOP-42")
    assert (caught.value.service, caught.value.status) == ("Jira", 401)

    async with JiraClient(jira.url, JIRA_EMAIL, JIRA_TOKEN) as client:
        with pytest.raises(IntegrationError, match="Issue does not exist"):
            await client.get_issue("SHOP-404")


def test_adf_to_text_reads_lists_code_and_mentions() -> None:
    document = {
        "type": "doc",
        "version": 1,
        "content": [
            {
                "type": "paragraph",
                "content": [
                    {"type": "mention", "attrs": {"id": "1", "text": "@Ana"}},
                    {"type": "text", "text": " saw this:"},
                ],
            },
            {
                "type": "bulletList",
                "content": [
                    {
                        "type": "listItem",
                        "content": [
                            {"type": "paragraph", "content": [{"type": "text", "text": "one"}]}
                        ],
                    },
                    {
                        "type": "listItem",
                        "content": [
                            {"type": "paragraph", "content": [{"type": "text", "text": "two"}]}
                        ],
                    },
                ],
            },
            {"type": "codeBlock", "content": [{"type": "text", "text": "1 / 0"}]},
        ],
    }

    assert adf_to_text(document) == "@Ana saw this:\n\n- one\n- two\n\n```\n1 / 0\n```"
    assert adf_to_text(text_to_adf("a\nb\n\nc")) == "a\nb\n\nc"
    assert adf_to_text(None) == ""


async def test_sentry_resolves_in_the_commit_else_the_next_release_else_now(
    sentry: FakeSentry, sentry_client: SentryClient
) -> None:
    issue_id = sentry.add_issue(short_id="SHOP-1")
    sha = "e5bd3914e2e596debea16f433f57875b5b90bcd6"
    assert await sentry_client.resolve_issue(issue_id, commit=sha, repository="acme/shop") == (
        "now"  # Sentry knows neither the repository nor a release
    )
    sentry.add_release("shop@1.0.0", commits=["0" * 40])
    assert (
        await sentry_client.resolve_issue(issue_id, commit=sha, repository="acme/shop")
        == "in the next release"
    )
    sentry.add_repository("acme/shop")
    assert (
        await sentry_client.resolve_issue(issue_id, commit=sha, repository="acme/shop")
        == "in commit e5bd3914e2e5"
    )
    assert [body.get("statusDetails") for _, body in sentry.resolutions] == [
        None,
        {"inNextRelease": True},
        {"inCommit": {"commit": sha, "repository": "acme/shop"}},
    ]


async def test_sentry_events_releases_commits_and_deploys(
    sentry: FakeSentry, sentry_client: SentryClient
) -> None:
    issue_id = sentry.add_issue(short_id="SHOP-1")
    deployed = datetime.now(UTC)
    sentry.add_release("shop@1.0.1", commits=["abc123"], deployed_at=deployed)
    sentry.add_release("web@2.0.0", project="web")
    sentry.add_event(issue_id, at=deployed + timedelta(seconds=5), release="shop@1.0.1")

    releases = await sentry_client.project_releases("shop-backend")
    assert [(r.version, r.commit_count) for r in releases] == [("shop@1.0.1", 1)]
    assert await sentry_client.release_commits("shop@1.0.1") == ["abc123"]
    assert await sentry_client.first_deploy("shop@1.0.1") == deployed
    assert await sentry_client.first_deploy("web@2.0.0") is None
    since = await sentry_client.issue_events(issue_id, start=deployed + timedelta(seconds=1))
    assert [event.release for event in since] == ["1.0.1"]
    assert len(await sentry_client.issue_events(issue_id, start=deployed - timedelta(hours=1))) == 2

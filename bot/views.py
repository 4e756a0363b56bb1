"""Block Kit for Fixbot's Slack messages, built from plain data by pure functions.

Every function returns a `Message`: the blocks, and the fallback text Slack shows in
notifications. Everything here keeps within Slack's limits (50 blocks a message, 3,000
characters a section, 150 a header, 75 a button, 4,000 the fallback text).

Untrusted text (titles, error messages, thread replies, whatever the model wrote) goes through
`escape`, so it cannot ping (`<!channel>`, `<@U…>`) or forge links (`<http://evil|click>`);
every mrkdwn object is `verbatim` so Slack does not parse mentions or names out of it either.
Links Fixbot makes itself go through `link`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from agents.plan import Plan
from bot.dashboard import Dashboard, TaskSummary
from bot.models import RefKind, State, Watch
from bot.redact import redact_blocks

MAX_BLOCKS = 50
MAX_HOME_BLOCKS = 100
SECTION_LIMIT = 3000
HEADER_LIMIT = 150
BUTTON_LIMIT = 75
FALLBACK_LIMIT = 4000
# Evidence and output excerpts are kept short: the full text lives in the pull request or logs.
EXCERPT_LIMIT = 1200


@dataclass(frozen=True)
class Message:
    """A Slack message: `text` is the notification fallback, `blocks` the Block Kit JSON."""

    text: str
    blocks: list[dict[str, Any]]

    def redacted(self, redactor: Callable[[str], str]) -> Message:
        """The same message with `redactor` applied to the fallback and every block text."""
        return Message(text=redactor(self.text), blocks=redact_blocks(self.blocks, redactor))


# ---------------------------------------------------------------------------- text helpers


def escape(text: str) -> str:
    """Escape Slack's control characters so untrusted text shows as written and does nothing."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def link(url: str, label: str) -> str:
    """A mrkdwn link `<url|label>`; a url that is not http(s) gives the escaped label alone."""
    label = escape(label) or escape(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return label
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return label
    if any(c.isspace() for c in url):
        return label
    # `|` and `>` would end the url part early; percent-encode what Slack treats as syntax.
    safe_url = url.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E")
    safe_url = safe_url.replace("|", "%7C")
    return f"<{safe_url}|{label}>"


def fmt_duration(seconds: float) -> str:
    """63 → "1:03"; 3723 → "1:02:03"."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def fmt_cost(usd: float) -> str:
    """0.314 → "$0.31"."""
    return f"${max(0.0, usd):,.2f}"


def _cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, never inside an `&amp;`-style entity."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    amp = cut.rfind("&", max(0, limit - 5))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut


def _fit(text: str, limit: int, rest: str | None = None) -> str:
    """Mrkdwn `text` within `limit` characters, ending "…" and saying where the rest is."""
    if len(text) <= limit:
        return text
    note = f"\n_(cut short; the rest is in {rest})_" if rest else ""
    return _cut(text, max(0, limit - len(note) - 1)) + "…" + note


def _tail(text: str, limit: int) -> str:
    """The last part of escaped `text` within `limit` characters, starting "…" when cut."""
    if len(text) <= limit:
        return text
    start = len(text) - max(0, limit - 1)
    # Never start inside an entity such as `&amp;`: skip past the rest of it.
    amp = text.rfind("&", max(0, start - 4), start)
    if amp != -1:
        semi = text.find(";", amp)
        if semi >= start:
            start = semi + 1
    return "…" + text[start:]


def _code_safe(text: str) -> str:
    """Text that cannot close a ``` code block early."""
    return text.replace("```", "`\u200b`\u200b`")


def _code_block(text: str, limit: int, *, rest: str | None = None, tail: bool = False) -> str:
    """Untrusted `text` as an escaped mrkdwn code block of at most `limit` characters."""
    body = _code_safe(escape(text.strip("\n"))) or " "
    room = limit - len("```\n\n```")
    if tail:
        if len(body) > room:
            note = f"_(earlier lines cut; the rest is in {rest})_\n" if rest else ""
            return note + "```\n" + _tail(body, room - len(note)) + "\n```"
        return "```\n" + body + "\n```"
    if len(body) > room:
        note = f"\n_(cut short; the rest is in {rest})_" if rest else ""
        return "```\n" + _fit(body, room - len(note)) + "\n```" + note
    return "```\n" + body + "\n```"


def inline_code(text: str, limit: int = SECTION_LIMIT) -> str:
    """Untrusted `text` as inline code: escaped, no backticks to break out, within `limit`."""
    return "`" + _fit(escape(text).replace("`", "'"), limit) + "`"


def _one_line(text: str, limit: int) -> str:
    """Untrusted `text` escaped, on one line, within `limit` characters."""
    return _fit(escape(" ".join(text.split())), limit)


def _mrkdwn(text: str) -> MarkdownTextObject:
    return MarkdownTextObject(text=text, verbatim=True)


def _section(text: str) -> SectionBlock:
    return SectionBlock(text=_mrkdwn(_fit(text, SECTION_LIMIT)))


def _context(text: str) -> ContextBlock:
    return ContextBlock(elements=[_mrkdwn(_fit(text, SECTION_LIMIT))])


def _button(label: str, action_id: str, value: str, style: str | None = None) -> ButtonElement:
    return ButtonElement(
        text=_fit(label, BUTTON_LIMIT), action_id=action_id, value=value, style=style
    )


def _message(text: str, blocks: Sequence[Block]) -> Message:
    """Build the message, keeping to 50 blocks (the last one, often the buttons, is kept)."""
    items = list(blocks)
    if len(items) > MAX_BLOCKS:
        items = [*items[: MAX_BLOCKS - 2], _context("_(more was cut to fit Slack)_"), items[-1]]
    return Message(text=_fit(text, FALLBACK_LIMIT), blocks=[b.to_dict() for b in items])


# ---------------------------------------------------------------------------- task messages

_STATE_WORDS: dict[str, str] = {
    State.QUEUED: ":hourglass_flowing_sand: Queued",
    State.PLANNING: ":hourglass: Planning",
    State.AWAITING_APPROVAL: ":eyes: Plan ready, waiting for approval",
    State.REVISING: ":pencil2: Revising the plan",
    State.APPROVED: ":thumbsup: Approved, waiting to start",
    State.EXECUTING: ":hammer_and_wrench: Writing the fix",
    State.DONE: ":white_check_mark: Pull request opened",
    State.REJECTED: ":no_entry: Rejected",
    State.FAILED: ":x: Failed",
    State.CANCELLED: ":heavy_multiplication_x: Cancelled",
    State.EXPIRED: ":zzz: Expired (plan not approved in time)",
}

_REF_LABELS: dict[str, str] = {
    RefKind.SENTRY: "Sentry",
    RefKind.GITHUB: "GitHub",
    RefKind.JIRA: "Jira",
    RefKind.TEXT: "Request",
}


def state_words(state: str) -> str:
    """A task state as people read it, with its emoji: "planning" → ":hourglass: Planning"."""
    return _STATE_WORDS.get(state, escape(state.replace("_", " ").capitalize()))


def _reference(task: TaskSummary) -> str:
    kind = _REF_LABELS.get(task.ref_kind, escape(task.ref_kind))
    key = " ".join(task.ref_key.split())
    if len(key) > 200:
        key = key[:199] + "…"
    shown = link(task.ref_url, key) if task.ref_url else escape(key)
    return f"{kind} {shown}"


def _title(task: TaskSummary, limit: int = 500) -> str:
    return _one_line(task.title or task.ref_key, limit)


def parent_message(task: TaskSummary, after_merge: str | None = None) -> Message:
    """The thread's parent: what the task is about, where, and how far it has got.

    `after_merge` is Fixbot's own line on the merged fix (resolved, watched, held…)."""
    title = _title(task)
    state = state_words(task.state)
    lines = [f"*{title}*"]
    facts = [
        _reference(task),
        f"Repository {inline_code(task.repo) if task.repo else '_unknown_'}",
    ]
    lines.append(" · ".join(facts))
    status = state
    if task.state == State.FAILED and task.failure:
        status += ": " + _one_line(task.failure, 300)
    lines.append(status)
    if task.pr_url:
        lines.append(f":link: Pull request: {link(task.pr_url, task.pr_url)}")
    if after_merge:
        lines.append(after_merge)
    return _message(f"{title} · {state}", [_section("\n".join(lines))])


def status_message(
    step: str,
    action: str,
    elapsed_s: float,
    cost_usd: float,
    *,
    done: bool = False,
    outcome: str | None = None,
) -> Message:
    """The one live line of a running step, edited in place.

    Running: ":gear: Planning — Reading shop/pricing.py · 0:42 · $0.12".
    Done: ":white_check_mark: Planning finished in 1:03 · $0.31"; with `outcome` (a short
    phrase such as "failed", "timed out", "was cancelled") it reads
    ":x: Planning failed after 1:03 · $0.31".
    """
    name = _one_line(step, 100)
    spent = f"{fmt_duration(elapsed_s)} · {fmt_cost(cost_usd)}"
    if not done:
        doing = _one_line(action, 300)
        line = f":gear: {name} — {doing} · {spent}" if doing else f":gear: {name} · {spent}"
    elif outcome is None:
        line = f":white_check_mark: {name} finished in {spent}"
    else:
        line = f"{_outcome_emoji(outcome)} {name} {_one_line(outcome, 300)} after {spent}"
    return _message(line, [_context(line)])


def _outcome_emoji(outcome: str) -> str:
    words = outcome.lower()
    if "cancel" in words:
        return ":heavy_multiplication_x:"
    if "time" in words:
        return ":alarm_clock:"
    if "budget" in words:
        return ":money_with_wings:"
    if any(w in words for w in ("fail", "error", "crash", "refus")):
        return ":x:"
    return ":white_check_mark:"


def queued_message(ahead: int) -> Message:
    """Where a new task waits: "Queued, 3 ahead"."""
    line = (
        f":hourglass_flowing_sand: Queued, {ahead} ahead"
        if ahead > 0
        else ":hourglass_flowing_sand: Queued, next up"
    )
    return _message(line, [_context(line)])


def _plan_blocks(
    task: TaskSummary, plan: Plan, plan_url: str | None, cost_usd: float
) -> list[Block]:
    rest = link(plan_url, "PLAN.md") if plan_url else "PLAN.md"

    def part(label: str, text: str) -> SectionBlock:
        head = f"*{label}*\n"
        return _section(head + _fit(escape(text.strip()), SECTION_LIMIT - len(head), rest))

    blocks: list[Block] = [
        HeaderBlock(text=_fit(f"Plan v{task.plan_version}", HEADER_LIMIT)),
        _context(_title(task, 300)),
        _section(_fit(escape(plan.summary.strip()), SECTION_LIMIT, rest)),
        part("Root cause", plan.root_cause),
    ]
    if plan.evidence:
        blocks.append(_section(_code_list("Evidence", plan.evidence, rest)))
    if plan.files:
        blocks.append(_section(_code_list("Files", plan.files, rest)))
    blocks.append(part("Test plan", plan.test_plan))
    blocks.append(part("Change", plan.change))
    blocks.append(part("Risk", plan.risk))
    if plan.out_of_scope.strip():
        blocks.append(part("Out of scope", plan.out_of_scope))
    footer = f"Spent so far: {fmt_cost(cost_usd)}"
    if plan_url:
        footer += f" · Full plan: {link(plan_url, 'PLAN.md')}"
    blocks.append(_context(footer))
    return blocks


def _code_list(label: str, items: Sequence[str], rest: str) -> str:
    head = f"*{label}*\n"
    body = " ".join(inline_code(" ".join(item.split())) for item in items if item.strip())
    return head + _fit(body, SECTION_LIMIT - len(head), rest)


def _plan_fallback(task: TaskSummary, plan: Plan) -> str:
    return f"Plan v{task.plan_version} for {_title(task, 300)}: {_one_line(plan.summary, 1000)}"


def plan_message(
    task: TaskSummary, plan: Plan, *, plan_url: str | None, cost_usd: float
) -> Message:
    """The plan with its `Approve` and `Reject` buttons, tied to this plan version."""
    value = f"{task.id}:{task.plan_version}"
    actions = ActionsBlock(
        block_id=f"plan:{task.id}:{task.plan_version}",
        elements=[
            _button("Approve", "approve", value, "primary"),
            _button("Reject", "reject", value, "danger"),
        ],
    )
    blocks = [*_plan_blocks(task, plan, plan_url, cost_usd), actions]
    return _message(_plan_fallback(task, plan), blocks)


def plan_decided(
    task: TaskSummary, plan: Plan, *, plan_url: str | None, cost_usd: float, note: str
) -> Message:
    """The plan as decided: the buttons replaced by `note` (Fixbot's own mrkdwn, see
    `decision_note`)."""
    blocks = [*_plan_blocks(task, plan, plan_url, cost_usd), DividerBlock(), _context(note)]
    return _message(f"{_plan_fallback(task, plan)} · {note}", blocks)


_DECISIONS: dict[str, str] = {
    "approved": ":white_check_mark: Approved",
    "rejected": ":no_entry: Rejected",
    "superseded": ":arrows_counterclockwise: Superseded by a revised plan",
    "expired": ":hourglass: Expired",
    "cancelled": ":heavy_multiplication_x: Cancelled",
}
_VERB_FORMS = {"approve": "approved", "reject": "rejected", "supersede": "superseded"}
_VERB_FORMS |= {"expire": "expired", "cancel": "cancelled", "canceled": "cancelled"}
_SLACK_USER = re.compile(r"^[UW][A-Z0-9_]+$")


def who(user: str) -> str:
    """A person as a Slack mention, or their escaped name when not a Slack user id ("cli")."""
    return f"<@{user}>" if _SLACK_USER.match(user) else escape(user)


def decision_note(verb: str, user: str | None, at: datetime) -> str:
    """ ":white_check_mark: Approved by <@U1> at 14:03 UTC" (times in UTC; naive means UTC)."""
    key = verb.strip().lower()
    key = _VERB_FORMS.get(key, key)
    words = _DECISIONS.get(key, f":information_source: {escape(verb.strip().capitalize())}")
    if user:
        words += f" by {who(user)}"
    moment = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return f"{words} at {moment:%H:%M} UTC"


def failure_message(task: TaskSummary, reason: str, *, output: str | None = None) -> Message:
    """What went wrong in plain words, the tail of the output, and `Retry` / `Cancel`."""
    blocks: list[Block] = [_section(":x: *Failed:* " + _fit(escape(reason.strip()), 2900))]
    if output and output.strip():
        blocks.append(_section(_code_block(output, SECTION_LIMIT, rest="the logs", tail=True)))
    blocks.append(
        ActionsBlock(
            block_id=f"failure:{task.id}",
            elements=[
                _button("Retry", "retry", str(task.id), "primary"),
                _button("Cancel", "cancel", str(task.id)),
            ],
        )
    )
    return _message(f"Failed: {_one_line(reason, 1000)} · {_title(task, 300)}", blocks)


def done_message(
    task: TaskSummary,
    *,
    pr_url: str,
    red_excerpt: str,
    green_excerpt: str,
    cost_usd: float,
    duration_s: float,
    test_changes: Sequence[str] = (),
    approve_test_changes: bool = False,
) -> Message:
    """The pull request's link, with red-then-green test evidence, spend and time.

    With `test_changes` the message lists the changes to how tests run; with
    `approve_test_changes` the pull request is a draft until an approver clicks
    "Approve test changes" here.
    """
    pr = link(pr_url, pr_url)
    where = link(pr_url, "the pull request")
    if approve_test_changes:
        head = (
            f":warning: Pull request opened as a draft: {pr}. It changes how tests run; "
            "an approver's *Approve test changes* marks it ready."
        )
        fallback = f"Pull request opened as a draft (test changes need approval): {pr_url}"
    else:
        head = f":white_check_mark: Pull request ready: {pr}"
        fallback = f"Pull request ready: {pr_url}"
    blocks: list[Block] = [_section(head)]
    if red_excerpt.strip():
        head = ":red_circle: *Failing before the fix*\n"
        blocks.append(
            _section(head + _code_block(red_excerpt, EXCERPT_LIMIT, rest=where, tail=True))
        )
    if green_excerpt.strip():
        head = ":large_green_circle: *Passing after the fix*\n"
        blocks.append(
            _section(head + _code_block(green_excerpt, EXCERPT_LIMIT, rest=where, tail=True))
        )
    blocks.append(_context(f"Spent {fmt_cost(cost_usd)} · Took {fmt_duration(duration_s)}"))
    if test_changes:
        blocks.append(_section(changes_to_tests_text(test_changes)))
    if approve_test_changes:
        blocks.append(
            ActionsBlock(
                block_id=f"test_changes:{task.id}",
                elements=[
                    _button("Approve test changes", "approve_test_changes", str(task.id), "primary")
                ],
            )
        )
    return _message(f"{fallback} · {_title(task, 300)}", blocks)


def changes_to_tests_text(changes: Sequence[str]) -> str:
    """The changes to how tests run, as a list (paths come from the repository: escaped)."""
    lines = [f"• {escape(change)}" for change in changes[:20]]
    if len(changes) > 20:
        lines.append(f"• …and {len(changes) - 20} more (see the pull request)")
    return _fit(":test_tube: *Changes to how tests run*\n" + "\n".join(lines), SECTION_LIMIT)


def test_changes_approved(user: str, pr_url: str | None) -> Message:
    """An approver approved the changes to how tests run."""
    ready = f" Pull request ready: {link(pr_url, pr_url)}" if pr_url else ""
    line = f":white_check_mark: Test changes approved by {who(user)}.{ready}"
    return _message(line, [_section(line)])


def ended_message(text: str) -> Message:
    """A plain closing note (rejected, cancelled). `text` is Fixbot's own mrkdwn: escape any
    untrusted part of it before passing it in."""
    return _message(text, [_section(text)])


def unmapped_project_message(project: str) -> Message:
    """Which Sentry project is not mapped to a repository, and the fixbot.yml that maps it."""
    name = " ".join(project.split())[:200]
    snippet = (
        "repos:\n"
        "  - name: owner/name\n"
        "    clone_url: https://github.com/owner/name.git\n"
        f"    sentry_projects: [{name}]\n"
    )
    text = (
        f":warning: Sentry project {inline_code(name)} is not mapped to a repository. "
        "Add it to the repository's `sentry_projects` in `fixbot.yml` and restart Fixbot:"
    )
    blocks = [_section(text), _section(_code_block(snippet, SECTION_LIMIT))]
    return _message(f"Sentry project {escape(name)} is not mapped to a repository", blocks)


# ---------------------------------------------------------------------------- pull request

PR_BODY_LIMIT = 60000  # GitHub refuses bodies over 65,536 characters.
PR_EXCERPT_LIMIT = 6000


def _fence(text: str, limit: int) -> str:
    """`text` (its tail, when long) in a ``` fence longer than any backtick run inside it."""
    text = text.strip("\n")
    if len(text) > limit:
        text = "…(earlier lines cut)\n" + text[len(text) - limit :]
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def pull_request_body(
    task: TaskSummary,
    plan: Plan,
    *,
    thread_url: str | None,
    red: str | None,
    green: str | None,
    cost_usd: float,
    duration_s: float | None,
    test_changes: Sequence[str] = (),
) -> str:
    """The pull request's description in GitHub markdown; without `red`/`green` it is the draft."""
    parts = ["## Summary", plan.summary.strip(), "", "## Root cause", plan.root_cause.strip()]
    if plan.evidence:
        parts += ["", *(f"- `{e.strip()}`" for e in plan.evidence if e.strip())]
    parts += [
        "",
        f"## Plan (v{task.plan_version})",
        f"**Test first:** {plan.test_plan.strip()}",
        "",
    ]
    parts += [f"**Change:** {plan.change.strip()}", "", f"**Risk:** {plan.risk.strip()}"]
    if plan.out_of_scope.strip():
        parts += ["", f"**Out of scope:** {plan.out_of_scope.strip()}"]
    if plan.files:
        parts += ["", "**Files:** " + ", ".join(f"`{f.strip()}`" for f in plan.files)]
    parts += ["", "## Verification"]
    if red is None and green is None:
        parts.append("_Pending: Fixbot runs the tests before marking this pull request ready._")
    if red is not None:
        parts += ["The new test fails before the fix (red):", _fence(red, PR_EXCERPT_LIMIT)]
    if green is not None:
        parts += ["", "The suite passes with the fix (green):", _fence(green, PR_EXCERPT_LIMIT)]
    if test_changes:
        parts += [
            "",
            "## Changes to how tests run",
            *(f"- {change}" for change in test_changes),
            "",
            "_Fixbot marks this pull request ready only after an approver approves these "
            "changes in Slack._",
        ]
    spend = f"Spend: {fmt_cost(cost_usd)}"
    if duration_s is not None:
        spend += f" · Time: {fmt_duration(duration_s)}"
    parts += ["", "---", spend]
    key = " ".join(task.ref_key.split())[:200]
    ref = f"[{key.replace(']', ')')}]({task.ref_url})" if task.ref_url else key
    origin = f"Reference: {ref}"
    if thread_url:
        origin += f" · [Slack thread]({thread_url})"
    parts += [origin, "", "_Opened by Fixbot._"]
    body = "\n".join(parts)
    if len(body) > PR_BODY_LIMIT:
        body = body[: PR_BODY_LIMIT - 40] + "\n\n…(cut to fit GitHub's limit)"
    return body


def home_view(dashboard: Dashboard, user: str, *, is_approver: bool) -> dict[str, Any]:
    """The App Home dashboard: what runs, what waits, what needs a decision, what it costs.

    Each list is capped and the recent tasks are paged (`home_page` buttons), so the view
    keeps within Slack's 100 blocks however many tasks there are.
    """
    blocks: list[Block] = [HeaderBlock(text=PlainTextObject(text="Fixbot"))]
    blocks += _home_stats(dashboard)
    blocks.append(DividerBlock())
    blocks.append(_section("*Running now*"))
    running = [
        f"{_home_task(task)} · {state_words(task.state)} for "
        f"{fmt_duration((dashboard.now - task.since).total_seconds())} · {fmt_cost(task.cost_usd)}"
        for task in dashboard.running
    ]
    blocks.append(_home_lines(running, "Nothing is running."))
    blocks.append(_section(f"*Queue* ({dashboard.queue_total})"))
    queued = [
        f"{place}. {_home_task(job.task)} · {escape(job.kind)}"
        for place, job in enumerate(dashboard.queue, start=1)
    ]
    blocks.append(_home_lines(queued, "The queue is empty.", dashboard.queue_total))
    blocks.append(DividerBlock())
    blocks.append(_section(f"*Plans awaiting approval* ({dashboard.awaiting_total})"))
    if not dashboard.awaiting:
        blocks.append(_context("No plan is waiting for a decision."))
    for task in dashboard.awaiting:
        blocks.append(_section(f"{_home_task(task)} · plan v{task.plan_version}"))
        if is_approver:
            value = f"{task.id}:{task.plan_version}"
            blocks.append(
                ActionsBlock(
                    block_id=f"home_plan:{task.id}:{task.plan_version}",
                    elements=[
                        _button("Approve", "approve", value, "primary"),
                        _button("Reject", "reject", value, "danger"),
                    ],
                )
            )
    if dashboard.awaiting_total > len(dashboard.awaiting):
        more = dashboard.awaiting_total - len(dashboard.awaiting)
        blocks.append(_context(f"…and {more} more waiting."))
    blocks.append(DividerBlock())
    blocks.append(_section("*My tasks*"))
    mine = [_home_outcome(task) for task in dashboard.mine]
    blocks.append(_home_lines(mine, f"Nothing requested by {who(user)} yet."))
    blocks.append(DividerBlock())
    blocks.append(_section(f"*Recent tasks* (page {dashboard.page + 1} of {dashboard.pages})"))
    if not dashboard.recent:
        blocks.append(_context("No tasks yet. Type `/fix SHOP-1A` in a channel to start one."))
    blocks += [_section(_home_outcome(task)) for task in dashboard.recent]
    paging = []
    if dashboard.page > 0:
        paging.append(_button("Newer", "home_page", str(dashboard.page - 1)))
    if dashboard.page + 1 < dashboard.pages:
        paging.append(_button("Older", "home_page", str(dashboard.page + 1)))
    if paging:
        blocks.append(ActionsBlock(block_id="home_paging", elements=paging))
    if len(blocks) > MAX_HOME_BLOCKS:  # only if the caps above change: keep the paging
        blocks = [*blocks[: MAX_HOME_BLOCKS - 2], _context("_(more was cut to fit Slack)_")]
        blocks += [ActionsBlock(block_id="home_paging", elements=paging)] if paging else []
    return {"type": "home", "blocks": [block.to_dict() for block in blocks]}


def thread_url(channel: str, thread_ts: str) -> str:
    """A task's thread, built without a network call (what chat.getPermalink returns)."""
    return f"https://slack.com/archives/{channel}/p{thread_ts.replace('.', '')}"


def _home_task(task: TaskSummary) -> str:
    """`*SHOP-1* title`, linked to the task's thread when it has one."""
    key = _one_line(task.ref_key, 60)
    title = _one_line(task.title, 100) if task.title != task.ref_key else ""
    if task.thread_ts:
        key = link(thread_url(task.channel_id, task.thread_ts), " ".join(task.ref_key.split())[:60])
    return f"*{key}* {title}".rstrip()


def _home_outcome(task: TaskSummary) -> str:
    line = f"{_home_task(task)}\n{state_words(task.state)} · {fmt_cost(task.cost_usd)}"
    if task.requested_by:
        line += f" · by {who(task.requested_by)}"
    if task.pr_url:
        line += f" · {link(task.pr_url, 'pull request')}"
    if task.after_merge:
        line += f" · {_AFTER_MERGE_WORDS[Watch(task.after_merge)]}"
    return line


_AFTER_MERGE_WORDS = {
    Watch.CLOSING: ":tada: merged",
    Watch.CLOSED: ":tada: merged",
    Watch.WATCHING: ":eyes: merged, watching",
    Watch.HELD: ":large_green_circle: fix held",
    Watch.NOT_HELD: ":red_circle: fix did not hold",
    Watch.UNRELEASED: ":grey_question: merged, not released",
    Watch.UNCHECKED: ":warning: merged, not checked",
    Watch.REGRESSED: ":leftwards_arrow_with_hook: regressed",
    Watch.REPLANNING: ":repeat: planned again",
}


def _home_lines(lines: Sequence[str], empty: str, total: int | None = None) -> Block:
    """Lines in one section (fewer blocks than one each), or a quiet note when there are none."""
    if not lines:
        return _context(empty)
    text = "\n".join(lines)
    if total is not None and total > len(lines):
        text += f"\n…and {total - len(lines)} more."
    return _section(text)


def _home_stats(dashboard: Dashboard) -> list[Block]:
    stats = dashboard.stats
    rate = "–" if stats.success_rate is None else f"{stats.success_rate:.0%}"
    to_plan = "–" if stats.median_to_plan_s is None else fmt_duration(stats.median_to_plan_s)
    to_pr = (
        "–"
        if stats.median_to_pull_request_s is None
        else fmt_duration(stats.median_to_pull_request_s)
    )
    week_budget = dashboard.daily_budget_usd * 7
    return [
        _section(
            f"*Last 7 days:* {rate} succeeded ({stats.succeeded} of {stats.finished} finished) · "
            f"median time to plan {to_plan}, to pull request {to_pr}\n"
            f"*Spend:* today {fmt_cost(stats.spend_today_usd)} of "
            f"{fmt_cost(dashboard.daily_budget_usd)} · this week "
            f"{fmt_cost(stats.spend_week_usd)} of {fmt_cost(week_budget)} · "
            f"{fmt_cost(dashboard.task_budget_usd)} a task at most"
        ),
    ]


# ---------------------------------------------------------------------------- conversation


def alert_offer(
    alert_id: int, title: str | None, ref: str, *, regression_of: str | None
) -> Message:
    """Fixbot's answer to an alert: what it saw, and a `Plan a fix` button."""
    what = _one_line(title or ref, 300)
    lines = [f":mag: Sentry issue {inline_code(ref)}: *{what}*"]
    if regression_of:
        lines.append(f":leftwards_arrow_with_hook: {regression_note(regression_of).text}")
    actions = ActionsBlock(
        block_id=f"alert:{alert_id}",
        elements=[_button("Plan a fix", "plan_alert", str(alert_id), "primary")],
    )
    return _message(f"Sentry issue {ref}: {what}", [_section("\n".join(lines)), actions])


def alert_offer_taken(title: str | None, ref: str, user: str | None) -> Message:
    """The offer once someone (or auto_plan) started planning."""
    what = _one_line(title or ref, 300)
    who = ""
    if user:
        who = f" by <@{user}>" if _SLACK_USER.match(user) else f" by {escape(user)}"
    line = f":mag: Sentry issue {inline_code(ref)}: *{what}*\n:hourglass: Planning started{who}."
    return _message(f"Planning {ref}", [_section(line)])


def seen_again(repeats: int) -> Message:
    """The one note, edited in place, that counts an alert's repeats."""
    line = f":repeat: Seen again ({repeats})"
    return _message(line, [_context(line)])


def regression_note(pr_url: str) -> Message:
    line = f"This issue came back after Fixbot fixed it in {link(pr_url, pr_url)}."
    return _message(line, [_section(f":leftwards_arrow_with_hook: {line}")])


def revising_message(user: str, feedback: str) -> Message:
    """A reply became feedback: the plan is being revised."""
    who = f"<@{user}>" if _SLACK_USER.match(user) else escape(user)
    quote = _fit(escape(" ".join(feedback.split())), 1500)
    line = f":pencil2: Revising the plan with {who}'s feedback:\n> {quote}"
    return _message("Revising the plan", [_section(line)])


def feedback_kept(state: str) -> Message:
    """A reply while a step runs: kept for a revised plan, which needs approval again."""
    line = (
        f":memo: Noted. The task is {state_words(state).split(' ', 1)[-1].lower()}; "
        "your reply goes into a revised plan, which needs approval again. A running fix "
        "follows only the approved plan."
    )
    return _message(line, [_context(line)])


def revising_with_kept_replies(count: int) -> Message:
    """Replies came in while a plan was made or a fix ran: the plan is revised with them."""
    replies = "A reply" if count == 1 else f"{count} replies"
    line = f":pencil2: {replies} came in meanwhile; revising the plan with them."
    return _message("Revising the plan", [_section(line)])


def question_message(question: str, approvers: Sequence[str], timeout_s: float) -> Message:
    """An agent's question in the thread, who may answer, and for how long it waits."""
    who = (
        " or ".join(f"<@{a}>" for a in approvers if _SLACK_USER.match(a))
        if approvers
        else "anyone here"
    )
    body = _fit(escape(question.strip()), 2500)
    line = (
        f":question: *The agent asks:*\n{body}\n_Reply in this thread ({who}); it waits "
        f"{fmt_duration(timeout_s)} and then carries on with its best assumption._"
    )
    return _message(f"The agent asks: {_one_line(question, 1000)}", [_section(line)])


def answer_passed(user: str) -> Message:
    line = f":speech_balloon: Thanks <@{user}>, I passed your answer to the agent."
    return _message(line, [_context(line)])


def question_unanswered() -> Message:
    line = ":hourglass: No answer in time; the agent carries on with its best assumption."
    return _message(line, [_context(line)])


def pull_request_closed(pr_url: str, *, merged: bool, by: str | None) -> Message:
    who = f" by {escape(by)}" if by else ""
    if merged:
        line = f":tada: Pull request {link(pr_url, pr_url)} was merged{who}. Task done."
    else:
        line = (
            f":heavy_multiplication_x: Pull request {link(pr_url, pr_url)} "
            f"was closed without merging{who}."
        )
    return _message(line, [_section(line)])


def task_status(task: TaskSummary) -> Message:
    """`@fixbot status`: where the task is."""
    line = f"{state_words(task.state)} · {_reference(task)}"
    if task.plan_version:
        line += f" · plan v{task.plan_version}"
    line += f" · spent {fmt_cost(task.cost_usd)}"
    if task.pr_url:
        line += f" · {link(task.pr_url, 'pull request')}"
    return _message(line, [_section(line)])


MENTION_HELP = (
    "In a task's thread: `@fixbot approve`, `reject`, `cancel`, `retry`, `status`, `help`. "
    "In any thread: `@fixbot fix` starts a task from the thread (name the repository with "
    "`repo:owner/name` unless only one is configured). A reply in the thread while a plan "
    "waits for approval revises the plan."
)


def note(text: str) -> Message:
    """A short line of Fixbot's own mrkdwn in a thread."""
    return _message(text, [_section(text)])


# ---------------------------------------------------------------------------- after the merge


def fmt_window(hours: float) -> str:
    """24 → "24 h"; 0.5 → "30 min"; 0.002 → "7 s": a watch window as people read it."""
    if hours >= 1:
        return f"{hours:g} h"
    if hours * 60 >= 1:
        return f"{hours * 60:g} min"
    return f"{hours * 3600:.0f} s"


def loop_closed(done: Sequence[str], watching: str | None) -> Message:
    """What Fixbot did about the merge: each line is Fixbot's own mrkdwn."""
    lines = [":white_check_mark: *After the merge*", *(f"• {line}" for line in done)]
    if watching:
        lines.append(f":eyes: {watching}")
    return _message("After the merge: " + " ".join(done), [_section("\n".join(lines))])


def fix_held(window: str, since: str, events_before: int | None) -> Message:
    """The watch ended with no new events."""
    line = f":large_green_circle: No new events in {window} {since}: the fix held."
    if events_before:
        line += f" (In the {window} before the merge: {events_before}.)"
    return _message(line, [_section(line)])


def fix_not_held(watch_id: int, count: int, since: str, pr_url: str) -> Message:
    """Events came after the fix: say so and offer to plan again."""
    many = f"{count}+" if count >= EVENTS_PAGE else str(count)
    line = (
        f":red_circle: Still seen: {many} event{'s' if count != 1 else ''} {since}, "
        f"the fix in {link(pr_url, 'the pull request')} did not hold."
    )
    return _message(line, [_section(line), _plan_again(watch_id)])


def fix_unreleased(window: str, commit: str | None) -> Message:
    """Sentry knows releases, but none carried the fix within the window."""
    what = f"commit `{escape(commit[:12])}`" if commit else "the merge"
    line = (
        f":grey_question: No release carrying {what} reached Sentry in {window}; "
        "nothing to judge the fix by yet."
    )
    return _message(line, [_section(line)])


def came_back(watch_id: int, ref: str, pr_url: str, *, regressed: bool) -> Message:
    """An issue came back after its merged fix (Sentry's regressed webhook, or an alert
    again): said in the original thread."""
    how = "Sentry marks" if regressed else "A Sentry alert names"
    what = "regressed: it came back" if regressed else "again: it came back"
    line = (
        f":leftwards_arrow_with_hook: {how} {inline_code(ref)} {what} "
        f"after Fixbot's fix in {link(pr_url, pr_url)}."
    )
    return _message(line, [_section(line), _plan_again(watch_id)])


def planning_again(text: str, user: str) -> Message:
    """The verdict once someone asked to plan again (its button goes)."""
    line = f"{text}\n:repeat: Planning again, asked by {who(user)}."
    return _message(line, [_section(line)])


def _plan_again(watch_id: int) -> ActionsBlock:
    return ActionsBlock(
        block_id=f"plan_again:{watch_id}",
        elements=[_button("Plan again", "plan_again", str(watch_id), "primary")],
    )


EVENTS_PAGE = 100  # Sentry's page of events: a full page means at least this many

"""Domain types: a task's states and their allowed transitions, references.

The plan as data is agents/plan.py's `Plan`: the planning step makes it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    QUEUED = "queued"
    PLANNING = "planning"
    AWAITING_APPROVAL = "awaiting_approval"
    REVISING = "revising"
    APPROVED = "approved"
    EXECUTING = "executing"
    DONE = "done"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = {State.DONE, State.REJECTED, State.CANCELLED, State.EXPIRED}
ACTIVE = {State.QUEUED, State.PLANNING, State.REVISING, State.APPROVED, State.EXECUTING}

# The one table of what may follow what (architecture.md, "Task states").
TRANSITIONS: dict[State, set[State]] = {
    State.QUEUED: {State.PLANNING, State.FAILED, State.CANCELLED},
    State.PLANNING: {State.AWAITING_APPROVAL, State.QUEUED, State.FAILED, State.CANCELLED},
    State.AWAITING_APPROVAL: {
        State.APPROVED,
        State.REJECTED,
        State.REVISING,
        State.CANCELLED,
        State.EXPIRED,
    },
    State.REVISING: {State.AWAITING_APPROVAL, State.FAILED, State.CANCELLED},
    State.APPROVED: {State.EXECUTING, State.FAILED, State.CANCELLED},
    State.EXECUTING: {State.DONE, State.APPROVED, State.FAILED, State.CANCELLED},
    # Retry: planning again when there is no plan yet, execution again when there is.
    # Retry with replies kept since the approval: the plan is revised (approval again).
    State.FAILED: {State.QUEUED, State.APPROVED, State.REVISING, State.CANCELLED},
    State.DONE: set(),
    State.REJECTED: set(),
    State.CANCELLED: set(),
    State.EXPIRED: set(),
}


class Watch(StrEnum):
    """After a task's pull request is merged: its `fix_watches` row's status."""

    CLOSING = "closing"  # merged; Sentry and Jira not told yet
    WATCHING = "watching"
    CLOSED = "closed"  # nothing to watch (no Sentry issue)
    HELD = "held"
    NOT_HELD = "not_held"
    UNRELEASED = "unreleased"  # no release carried the fix within the window
    UNCHECKED = "unchecked"  # Sentry could not be asked at the window's end
    REGRESSED = "regressed"
    REPLANNING = "replanning"


class RefKind(StrEnum):
    SENTRY = "sentry"
    GITHUB = "github"
    JIRA = "jira"
    TEXT = "text"


@dataclass(frozen=True)
class Reference:
    """What a task is about, as parsed from what someone typed."""

    kind: RefKind
    key: str  # SHOP-1A, sentry issue id, owner/name#12, SHOP-42, or the free text
    url: str | None = None
    repo: str | None = None  # owner/name when the reference names it

"""Domain types: a task's states and their allowed transitions, references, plans."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, Field

from storage.jobs import JobKind


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


AFTER_MERGE = JobKind.AFTER_MERGE


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


class Plan(BaseModel):
    """A fix plan as structured data: what the planning step returns and Slack shows."""

    summary: str = Field(description="One or two sentences: what is broken and the fix.")
    root_cause: str = Field(description="Why it breaks, with file:line evidence.")
    evidence: list[str] = Field(default=[], description="file:line locations that show it.")
    files: list[str] = Field(default=[], description="Files the fix will change.")
    test_plan: str = Field(description="The failing test to write first, and where.")
    change: str = Field(description="The code change that makes the test pass.")
    risk: str = Field(description="What could go wrong, and how likely.")
    out_of_scope: str = Field(default="", description="What this fix deliberately leaves.")

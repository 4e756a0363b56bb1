"""The tables. Schema changes go through an Alembic migration in `migrations/versions/`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(at: datetime) -> datetime:
    """SQLite hands back naive datetimes; Fixbot stores UTC."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSON,
    }


class Task(Base):
    """One production error on its way to a pull request; lives in one Slack thread."""

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[str] = mapped_column(String(32), index=True)
    ref_kind: Mapped[str] = mapped_column(String(16))
    ref_key: Mapped[str] = mapped_column(Text)  # whatever was typed, whole
    ref_url: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    repo: Mapped[str | None] = mapped_column(String(200))
    context: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str | None] = mapped_column(String(64))
    priority: Mapped[int] = mapped_column(Integer, default=1)
    channel_id: Mapped[str] = mapped_column(String(64))
    thread_ts: Mapped[str | None] = mapped_column(String(32))
    status_message_ts: Mapped[str | None] = mapped_column(String(32))
    plan_message_ts: Mapped[str | None] = mapped_column(String(32))
    plan_version: Mapped[int] = mapped_column(Integer, default=0)
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    plan_markdown: Mapped[str | None] = mapped_column(Text)
    branch: Mapped[str | None] = mapped_column(String(200))
    base_commit: Mapped[str | None] = mapped_column(String(64))
    pr_number: Mapped[int | None] = mapped_column(Integer)
    pr_url: Mapped[str | None] = mapped_column(Text)
    decided_by: Mapped[str | None] = mapped_column(String(64))
    failure: Mapped[str | None] = mapped_column(Text)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # A task started in someone else's thread (an alert's): Fixbot's own status message there.
    parent_ts: Mapped[str | None] = mapped_column(String(32))
    # The "pull request ready" reply, once posted: a resumed step does not post it twice.
    done_message_ts: Mapped[str | None] = mapped_column(String(32))
    # Replies kept for the next agent step (untrusted text).
    feedback: Mapped[list[str] | None] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_tasks_thread", "channel_id", "thread_ts"),
        # The dashboard: the week's tasks, and someone's newest tasks.
        Index("ix_tasks_created_at", "created_at", "state"),
        Index("ix_tasks_requested_by", "requested_by", "id"),
    )


class TaskEvent(Base):
    """Append-only audit: one row per state transition."""

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Job(Base):
    """A unit of queued work (an agent step), claimed by a worker under a lease."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    priority: Mapped[int] = mapped_column(Integer, default=1)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    run_after: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    # When the job first failed for a passing reason: such waits have their own bound.
    transient_since: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (Index("ix_jobs_claim", "status", "kind", "priority", "run_after", "id"),)


class AgentRun(Base):
    """One Claude Code step: what it cost and how it ended."""

    __tablename__ = "agent_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    step: Mapped[str] = mapped_column(String(16))
    session_id: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(32))
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    turns: Mapped[int] = mapped_column(Integer, default=0)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)

    # Spend since a time (before every step, and on the dashboard), read from the index alone.
    __table_args__ = (Index("ix_agent_runs_started_at", "started_at", "cost_usd"),)


class Alert(Base):
    """A Sentry issue seen in an alert channel or webhook: one task per issue."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(primary_key=True)
    sentry_issue: Mapped[str] = mapped_column(String(64), unique=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"))
    count: Mapped[int] = mapped_column(Integer, default=1)
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    short_id: Mapped[str | None] = mapped_column(String(64))
    url: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str | None] = mapped_column(Text)
    channel_id: Mapped[str | None] = mapped_column(String(64))
    message_ts: Mapped[str | None] = mapped_column(String(32))  # the alert (thread parent)
    offer_ts: Mapped[str | None] = mapped_column(String(32))  # Fixbot's `Plan a fix` reply
    note_ts: Mapped[str | None] = mapped_column(String(32))  # the "seen again" note


class Question(Base):
    """A question an agent asked in its task's thread, and the answer if one came."""

    __tablename__ = "questions"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    question: Mapped[str] = mapped_column(Text)
    message_ts: Mapped[str | None] = mapped_column(String(32))
    asked_at: Mapped[datetime] = mapped_column(default=utcnow)
    answer: Mapped[str | None] = mapped_column(Text)
    answered_by: Mapped[str | None] = mapped_column(String(64))
    answered_at: Mapped[datetime | None] = mapped_column()


class WebhookDelivery(Base):
    """A trigger already handled: a webhook delivery, a Slack event or click, an alert's
    `Plan a fix`. A second delivery with the same (source, id) is a no-op, on any replica."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(16))
    delivery_id: Mapped[str] = mapped_column(String(200))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("source", "delivery_id", name="uq_webhook_delivery"),)


class SessionEntry(Base):
    """One line of a Claude Code session transcript, mirrored through the SDK's SessionStore.

    `subpath` is '' for the main transcript and e.g. 'subagents/agent-1' for a subagent's;
    `seq` orders the lines of one transcript.
    """

    __tablename__ = "session_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_key: Mapped[str] = mapped_column(String(255))
    session_id: Mapped[str] = mapped_column(String(200))
    subpath: Mapped[str] = mapped_column(String(255), default="")
    seq: Mapped[int] = mapped_column(Integer)
    entry: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint(
            "project_key", "session_id", "subpath", "seq", name="uq_session_entries_seq"
        ),
    )


class FixWatch(Base):
    """After a task's pull request is merged: closing the loop, then watching the error.

    `status` moves closing → watching → held | not_held | unreleased, or to regressed
    when Sentry says the issue came back; replanning once someone asked to plan again.
    """

    __tablename__ = "fix_watches"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    pr_url: Mapped[str] = mapped_column(Text)
    merge_commit: Mapped[str | None] = mapped_column(String(64))
    merged_by: Mapped[str | None] = mapped_column(String(200))
    merged_at: Mapped[datetime] = mapped_column(default=utcnow)  # when Fixbot heard of it
    window_ends_at: Mapped[datetime] = mapped_column()
    sentry_issue: Mapped[str | None] = mapped_column(String(64), index=True)  # numeric id
    short_id: Mapped[str | None] = mapped_column(String(64), index=True)
    resolved_how: Mapped[str | None] = mapped_column(Text)  # "in commit abc1234", …
    release: Mapped[str | None] = mapped_column(String(200))  # the release carrying the fix
    released_at: Mapped[datetime | None] = mapped_column()
    events_before: Mapped[int | None] = mapped_column(Integer)
    events_since: Mapped[int | None] = mapped_column(Integer)
    checks: Mapped[int] = mapped_column(Integer, default=0)
    checked_at: Mapped[datetime | None] = mapped_column()
    report_ts: Mapped[str | None] = mapped_column(String(32))  # the thread's verdict message
    replan_task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"))

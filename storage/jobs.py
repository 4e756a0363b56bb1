"""What a job is: the step it runs (its kind) and where it stands in the queue (its status)."""

from __future__ import annotations

from enum import StrEnum


class JobKind(StrEnum):
    PLANNING = "planning"
    EXECUTION = "execution"
    AFTER_MERGE = "after_merge"  # a merged fix's follow-up (bot/aftermerge.py)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

"""Tasks: their store, lifecycle, agent steps, delivery and questions (docs/architecture.md)."""

from bot.tasks.lifecycle import (
    PRIORITY_ERROR,
    PRIORITY_OTHER,
    PRIORITY_URGENT,
    Decision,
    priority_for_level,
)
from bot.tasks.workflow import Workflow

__all__ = [
    "PRIORITY_ERROR",
    "PRIORITY_OTHER",
    "PRIORITY_URGENT",
    "Decision",
    "Workflow",
    "priority_for_level",
]

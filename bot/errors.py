"""Fixbot's named errors. Each carries the sentence a person should see."""

from datetime import datetime


class FixbotError(Exception):
    """Base of every error Fixbot expects; `str(error)` is fit to show a person."""


class ConfigError(FixbotError):
    """A setting is missing or malformed."""


class BadReference(FixbotError):
    """What someone typed after `/fix` is not a reference Fixbot can use."""


class NotAllowed(FixbotError):
    """The person may not do this (approve without being an approver, for example)."""


class InvalidTransition(FixbotError):
    """The task is not in a state where this can happen (a second click, a finished task)."""


class DailyBudgetReached(FixbotError):
    """Today's agent spend reached the daily budget; work waits until `until`."""

    def __init__(self, message: str, *, until: datetime) -> None:
        super().__init__(message)
        self.until = until


class StepFailed(FixbotError):
    """An agent step or Fixbot's own checks after it did not succeed."""

    def __init__(self, message: str, *, output: str | None = None) -> None:
        super().__init__(message)
        self.output = output  # command output worth showing with the reason

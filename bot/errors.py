"""The bot's named errors. Each carries the sentence a person should see.

Four kinds decide what happens next, and the worker pool acts on them: `Refused`
(nothing was done; say why), `StepFailed` (the step ends; the thread offers Retry),
`Transient` (a service is briefly away; the step is tried again after a back-off),
`Postponed` (the step waits until a given time without counting as an attempt).
`FixbotError`, `StepFailed` and `Transient` are in repos/errors.py: git, the sandbox and
the agents, below the bot, raise them too.
"""

from datetime import datetime

from repos.errors import FixbotError


class ConfigError(FixbotError):
    """A setting is missing or malformed."""


class Refused(FixbotError):
    """Fixbot will not do what was asked, and changed nothing."""


class BadReference(Refused):
    """What someone typed after `/fix` is not a reference Fixbot can use."""


class NotAllowed(Refused):
    """The person may not do this (approve without being an approver, for example)."""


class InvalidTransition(Refused):
    """The task is not in a state where this can happen (a second click, a finished task)."""


class Postponed(FixbotError):
    """The step may not run before `until`; it waits without using an attempt."""

    def __init__(self, message: str, *, until: datetime) -> None:
        super().__init__(message)
        self.until = until


class DailyBudgetReached(Postponed):
    """Today's agent spend reached the daily budget; work waits until `until`."""


class LeaseLost(FixbotError):
    """This worker no longer holds the job's lease (it ran past it, and another took over)."""

"""The base of Fixbot's named errors, and the two kinds raised below the bot.

Each carries the sentence a person should see. The worker pool acts on the kind:
`StepFailed` (the step ends; the thread offers Retry), `Transient` (a service is briefly
away; the step is tried again after a back-off). They live here, in the lowest package,
because git, the sandbox and the agents raise them too; the bot's own errors (`Refused`,
`Postponed` and the rest) are in bot/errors.py.
"""


class FixbotError(Exception):
    """Base of every error Fixbot expects; `str(error)` is fit to show a person."""


class Transient(FixbotError):
    """A service (Sentry, GitHub, Jira, Slack, git's remote, the database, the model API)
    is briefly unavailable; the same call later may well succeed."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds the service asked for, if it said


class StepFailed(FixbotError):
    """An agent step or Fixbot's own checks after it did not succeed."""

    def __init__(self, message: str, *, output: str | None = None) -> None:
        super().__init__(message)
        self.output = output  # command output worth showing with the reason

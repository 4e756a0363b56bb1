"""Who may decide on a task: the one place every approval asks.

Slack's buttons, `@fixbot approve`, App Home and the GitHub webhook all ask this policy,
so a rule added here (a second person, an explicit list of GitHub approvers) holds on
every surface at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bot.config import Settings
from bot.errors import NotAllowed
from storage.tables import Task


@dataclass(frozen=True)
class ApprovalPolicy:
    approvers: frozenset[str]  # Slack user ids; empty: anyone in the channel
    github_approvers: frozenset[str]  # GitHub logins, lower case; empty: GitHub approvals off
    require_second_person: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> ApprovalPolicy:
        return cls(
            approvers=frozenset(settings.approvers),
            github_approvers=_lower(settings.github_approvers),
            require_second_person=settings.require_second_person,
        )

    def is_approver(self, user: str) -> bool:
        """Whether `user` may decide on plans at all (approve, reject, answer questions)."""
        return not self.approvers or user in self.approvers

    def check_decide(self, user: str) -> None:
        """Raise NotAllowed unless `user` may decide on plans (reject, for example)."""
        if not self.is_approver(user):
            raise NotAllowed(
                "Only the approvers listed in Fixbot's settings can decide on plans; "
                "nothing was changed."
            )

    def check_approve(self, user: str, task: Task) -> None:
        """Raise NotAllowed unless `user` may approve `task`'s plan or test changes."""
        self.check_decide(user)
        if self.require_second_person and task.requested_by == user:
            raise NotAllowed(
                "You asked for this fix, and this workspace requires a second person to "
                "approve it: ask another approver. Nothing was changed."
            )

    def is_github_approver(self, login: str) -> bool:
        """Whether a GitHub `@fixbot approve` comment by `login` counts: only when listed."""
        return login.lower() in self.github_approvers


def _lower(names: Iterable[str]) -> frozenset[str]:
    return frozenset(name.lower() for name in names)

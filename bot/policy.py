"""Who may decide on a task: the one place every approval asks.

Slack's buttons, `@fixbot approve`, App Home, agents' questions and the GitHub webhook all
ask `may_approve`, so a rule added here holds on every surface at once.
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

    def refusal(self, user: str, task: Task | None = None, *, github: bool = False) -> str | None:
        """Why `user` may not approve `task`'s plan or test changes, in a sentence; None
        when they may. Without a task: whether they may decide on plans at all (reject,
        answer an agent's question). `github`: `user` is a GitHub login, which counts only
        when listed in `github_approvers`."""
        listed = (
            user.lower() in self.github_approvers
            if github
            else not self.approvers or user in self.approvers
        )
        if not listed:
            return (
                "Only the approvers listed in Fixbot's settings can decide on plans; "
                "nothing was changed."
            )
        if task is not None and self.require_second_person and task.requested_by == user:
            return (
                "You asked for this fix, and this workspace requires a second person to "
                "approve it: ask another approver. Nothing was changed."
            )
        return None

    def may_approve(self, user: str, task: Task | None = None, *, github: bool = False) -> bool:
        return self.refusal(user, task, github=github) is None

    def check_approve(self, user: str, task: Task | None = None) -> None:
        """Raise NotAllowed, with the reason, unless `user` may approve (see `refusal`)."""
        refusal = self.refusal(user, task)
        if refusal is not None:
            raise NotAllowed(refusal)


def _lower(names: Iterable[str]) -> frozenset[str]:
    return frozenset(name.lower() for name in names)

"""A repository's settings (`repos:` in fixbot.yml): where it is and how its tests run.

Here rather than in bot/config.py because the workspaces, the environments and the
execution step read it, and they stand below the bot.
"""

from pydantic import BaseModel, ConfigDict, Field


class RepoConfig(BaseModel):
    """One repository Fixbot may fix."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    clone_url: str
    default_branch: str = "main"
    sentry_projects: list[str] = []
    jira_projects: list[str] = []
    test_command: str = "python -m pytest -q"
    lint_command: str | None = None
    network_allow: list[str] = []  # hosts (host or host:port, 443 by default) test runs reach
    # The repo's test environment (repos/environment.py): run once per change of
    # `setup_files` (default: the usual manifests and lock files), cached.
    setup_command: str | None = None
    setup_files: list[str] = []

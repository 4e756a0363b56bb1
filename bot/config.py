"""Settings: secrets from the environment (or `.env`), structure from `fixbot.yml`.

Environment variables override the file's scalar keys. A missing or malformed setting
becomes one `ConfigError` naming the variable or key and how to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bot.errors import ConfigError
from repos.config import RepoConfig


class Concurrency(BaseModel):
    model_config = ConfigDict(extra="forbid")

    planning: int = Field(default=2, ge=1)
    execution: int = Field(default=2, ge=1)


class Workers(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Worker processes `python app.py` starts for the agent steps (`fixbot worker`); 0 runs
    # them in the app's own process, beside Slack.
    processes: int = Field(default=1, ge=0)


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_budget_usd: float = Field(default=5.0, gt=0)
    daily_budget_usd: float = Field(default=100.0, gt=0)
    planning_timeout_s: float = Field(default=900, gt=0)
    execution_timeout_s: float = Field(default=2700, gt=0)
    test_run_timeout_s: float = Field(default=600, gt=0)  # each of Fixbot's red/green/suite runs
    plan_ttl_hours: float = Field(default=72, gt=0)
    queued_ttl_hours: float = Field(default=24, gt=0)  # a job waiting longer fails, with why
    # How long a step waits out services that are briefly away before it fails.
    transient_wait_s: float = Field(default=600, gt=0)
    # A step that met such a failure is tried again after this long, doubling each attempt
    # (to at most 300 s, with jitter; a Retry-After the service gave is honoured).
    retry_backoff_s: float = Field(default=5, gt=0)
    job_lease_s: float = Field(default=30, gt=0)  # a dead worker's job is taken over after this
    sweep_interval_s: float = Field(default=15, gt=0)  # how often stale work is looked for
    # How often a merged fix's error is checked in Sentry during verify_window_hours.
    verify_check_interval_s: float = Field(default=3600, gt=0)
    # How long `/fix` waits for Sentry, GitHub or Jira to confirm a reference before the
    # task starts anyway (and its planning step looks it up again).
    reference_timeout_s: float = Field(default=5, gt=0)
    setup_timeout_s: float = Field(default=1800, gt=0)  # a repo's setup_command, once cached
    # On SIGTERM/SIGINT running steps get this long to finish before they are cancelled.
    shutdown_grace_s: float = Field(default=20, ge=0)


class McpServer(BaseModel):
    """An MCP server in Claude Code's mcp.json form, plus Fixbot's `read_only` mark."""

    model_config = ConfigDict(extra="allow")

    read_only: bool = False

    def for_claude(self) -> dict[str, Any]:
        """The server's entry as Claude Code reads it (without Fixbot's own keys)."""
        return self.model_dump(exclude={"read_only"}, exclude_none=True)


# Where each secret comes from, for the message a person sees when it is missing.
HINTS = {
    "SLACK_BOT_TOKEN": (
        "the Bot User OAuth Token (xoxb-…) from your Slack app's page "
        "https://api.slack.com/apps → OAuth & Permissions"
    ),
    "SLACK_APP_TOKEN": (
        "an app-level token (xapp-…) with the connections:write scope from "
        "https://api.slack.com/apps → Basic Information → App-Level Tokens"
    ),
}

# Variables Fixbot keeps to itself: they leave os.environ once settings are loaded,
# so that no child process (Claude Code, its Bash, git) inherits them.
SECRET_VARIABLES = (
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "SENTRY_AUTH_TOKEN",
    "SENTRY_WEBHOOK_SECRET",
    "GITHUB_TOKEN",
    "GITHUB_WEBHOOK_SECRET",
    "JIRA_API_TOKEN",
    "JIRA_WEBHOOK_SECRET",
    "DATABASE_URL",
    "ANTHROPIC_API_KEY",
    "CLAUDE_CODE_OAUTH_TOKEN",
)


class Settings(BaseSettings):
    """Everything Fixbot is configured with (interface.md, "Settings")."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    slack_bot_token: SecretStr
    slack_app_token: SecretStr
    slack_api_url: str = "https://slack.com/api/"
    database_url: SecretStr = SecretStr("sqlite+aiosqlite:///data/fixbot.db")
    fixbot_config: Path = Path("fixbot.yml")
    fixbot_workdir: Path = Path("data/work")
    fixbot_http_port: int = Field(default=8080, ge=0, le=65535)
    fixbot_http_host: str = "127.0.0.1"
    sentry_url: str = "https://sentry.io"
    sentry_auth_token: SecretStr | None = None
    sentry_org: str | None = None
    sentry_webhook_secret: SecretStr | None = None
    github_api_url: str = "https://api.github.com"
    github_token: SecretStr | None = None
    github_webhook_secret: SecretStr | None = None
    jira_url: str | None = None
    jira_email: str | None = None
    jira_api_token: SecretStr | None = None
    jira_webhook_secret: SecretStr | None = None
    anthropic_api_key: SecretStr | None = None
    claude_code_oauth_token: SecretStr | None = None
    anthropic_base_url: str | None = None
    claude_cli_path: str | None = None
    # How often Claude Code itself retries an overloaded or rate-limited API before the
    # step fails and Fixbot's own backoff takes over (None: Claude Code's default, 10).
    claude_code_max_retries: int | None = Field(default=None, ge=0)
    log_format: str = Field("json", pattern="^(json|console)$")

    # From fixbot.yml.
    repos: list[RepoConfig] = []
    approvers: list[str] = []
    alert_channels: list[str] = []
    auto_plan: bool = False
    concurrency: Concurrency = Concurrency()
    workers: Workers = Workers()
    limits: Limits = Limits()
    mcp_servers: dict[str, McpServer] = {}
    jira_transition: str | None = "In Review"  # where a Jira issue moves when its PR is ready
    github_approvers: list[str] = []  # GitHub logins whose `@fixbot approve` counts; []: off
    require_second_person: bool = False  # the requester may not approve their own plan
    jira_label: str = "fixbot"  # Jira issues created with this label become tasks
    question_timeout_s: float = Field(default=600, gt=0)  # how long an agent waits for an answer
    # required: no agent or test run without an OS sandbox (repos/sandbox.py); off: unconfined.
    sandbox: Literal["required", "off"] = "required"
    fixbot_bwrap: str = "bwrap"  # the bubblewrap binary the sandbox is made with
    # After a merge: how long Fixbot watches the error in Sentry (fractions work), and
    # where the task's Jira issue moves.
    verify_window_hours: float = Field(default=24, gt=0)
    jira_done_transition: str | None = "Done"

    @field_validator(
        "sentry_auth_token",
        "sentry_webhook_secret",
        "github_token",
        "github_webhook_secret",
        "jira_api_token",
        "jira_webhook_secret",
        "anthropic_api_key",
        "claude_code_oauth_token",
    )
    @classmethod
    def _blank_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty secret would sign webhooks with "" (anyone can): it counts as unset.
        return value if value is not None and value.get_secret_value().strip() else None

    @field_validator("slack_bot_token")
    @classmethod
    def _bot_token_shape(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("xoxb-"):
            raise ValueError("must be a bot token starting with xoxb-")
        return value

    @field_validator("slack_app_token")
    @classmethod
    def _app_token_shape(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("xapp-"):
            raise ValueError("must be an app-level token starting with xapp-")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = init_settings.init_kwargs.pop("_yaml_file", None)  # type: ignore[attr-defined]
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    @property
    def jira_enabled(self) -> bool:
        return bool(self.jira_url and self.jira_email and self.jira_api_token)

    @property
    def sentry_enabled(self) -> bool:
        return bool(self.sentry_auth_token and self.sentry_org)

    @property
    def github_enabled(self) -> bool:
        return self.github_token is not None

    @property
    def agent_home(self) -> Path:
        """Claude Code's private HOME: its sessions (transcripts) live under it."""
        return self.fixbot_workdir.resolve() / "claude-home"

    def repo(self, name: str) -> RepoConfig | None:
        return next((repo for repo in self.repos if repo.name.lower() == name.lower()), None)

    def secret_values(self) -> list[str]:
        """The values of Fixbot's own secrets, for the redaction filter: every token and
        webhook secret, however short, and the database password."""
        values = [
            value.get_secret_value()
            for field in type(self).model_fields
            if field != "database_url" and isinstance(value := getattr(self, field), SecretStr)
        ]
        try:
            password = make_url(self.database_url.get_secret_value()).password
        except ArgumentError:  # not a URL SQLAlchemy reads: hide all of it
            password = self.database_url.get_secret_value()
        if password:
            values.append(str(password))
        return [value for value in values if value]


def load_settings(env_file: str | Path = ".env", **overrides: Any) -> Settings:
    """Read settings from the environment, `.env` and the YAML file, or raise ConfigError.

    `overrides` win over all three (`fixbot local` gives its own Slack tokens this way).
    """
    dotenv = {key.upper(): value for key, value in dotenv_values(env_file).items() if value}
    config_name = os.environ.get("FIXBOT_CONFIG") or dotenv.get("FIXBOT_CONFIG")
    config_path = Path(config_name or "fixbot.yml")
    if config_path.is_dir():
        raise ConfigError(
            f"{config_path} is a directory, not a file (a bind mount of a missing file makes "
            "one): remove it, create fixbot.yml from fixbot.example.yml, and start again."
        )
    if config_name and not config_path.is_file():
        raise ConfigError(
            f"FIXBOT_CONFIG points at {config_path}, which does not exist. "
            "Create it (see fixbot.example.yml) or unset FIXBOT_CONFIG to use ./fixbot.yml."
        )
    yaml_file = config_path if config_path.is_file() else None
    if yaml_file is not None:
        _check_yaml(yaml_file)
    try:
        return Settings(_env_file=env_file, _yaml_file=yaml_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as error:
        raise ConfigError(_explain(error, yaml_file)) from None


def blank_secrets(env_file: str | Path = ".env") -> list[str]:
    """Secret variables set to an empty value (in the environment or `.env`): unset."""
    dotenv = {key.upper(): value for key, value in dotenv_values(env_file).items()}
    return [
        name
        for name in SECRET_VARIABLES
        if (value := os.environ.get(name, dotenv.get(name))) is not None and not value.strip()
    ]


def scrub_environment() -> None:
    """Take Fixbot's secrets out of os.environ once they are loaded (children inherit it)."""
    for name in SECRET_VARIABLES:
        os.environ.pop(name, None)


def _check_yaml(path: Path) -> None:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}: fix the file's syntax.") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of keys (repos, approvers, …).")


def _explain(error: ValidationError, yaml_file: Path | None) -> str:
    lines = []
    env_fields = {name for name, field in Settings.model_fields.items() if name not in _YAML_KEYS}
    for problem in error.errors():
        location = [str(part) for part in problem["loc"]]
        head = location[0] if location else "?"
        if head in env_fields:
            variable = head.upper()
            if problem["type"] == "missing":
                how = HINTS.get(variable, "see .env.example")
                lines.append(f"{variable} is not set: set it in the environment or .env to {how}.")
            else:
                lines.append(
                    f"{variable} {problem['msg'].lower()}: fix it in the environment or .env."
                )
        else:
            key = ".".join(location)
            where = yaml_file or "fixbot.yml"
            lines.append(f"{where}: {key}: {problem['msg'].lower()}.")
    return "\n".join(lines)


_YAML_KEYS = {
    "repos",
    "approvers",
    "alert_channels",
    "auto_plan",
    "concurrency",
    "workers",
    "limits",
    "mcp_servers",
    "github_approvers",
    "require_second_person",
    "jira_label",
    "question_timeout_s",
    "jira_transition",
    "sandbox",
    "verify_window_hours",
    "jira_done_transition",
}

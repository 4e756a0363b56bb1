"""The scripted model the tests script: the product's own (`bot.local.scripted_model`)."""

from bot.local.scripted_model import (
    Failure,
    LoggedRequest,
    Pause,
    Script,
    ScriptedModel,
    Text,
    ToolUse,
    Turn,
    overloaded,
    pause,
    rate_limited,
    structured,
    text,
    tool,
)

__all__ = [
    "Failure",
    "LoggedRequest",
    "Pause",
    "Script",
    "ScriptedModel",
    "Text",
    "ToolUse",
    "Turn",
    "overloaded",
    "pause",
    "rate_limited",
    "structured",
    "text",
    "tool",
]

"""Logging: one JSON object a line (timestamp, level, agent, task_id, message, data).

`LOG_FORMAT=console` prints the same facts for people. Everything a job logs carries its
task id and agent through `bind` (a context variable, so it follows the job's asyncio task
and whatever it spawns), and every line passes through the redaction filter first.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

Redact = Callable[[str], str]

_task_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("task_id", default=None)
_agent: contextvars.ContextVar[str | None] = contextvars.ContextVar("agent", default=None)


def bind(*, task_id: int | None = None, agent: str | None = None) -> None:
    """Tag everything logged from here on in this context (a job's own asyncio task)."""
    _task_id.set(task_id)
    _agent.set(agent)


@contextlib.contextmanager
def context(*, task_id: int | None = None, agent: str | None = None) -> Iterator[None]:
    """Tag everything logged inside the block, then restore what was there."""
    task_token = _task_id.set(task_id)
    agent_token = _agent.set(agent)
    try:
        yield
    finally:
        _agent.reset(agent_token)
        _task_id.reset(task_token)


def _facts(record: logging.LogRecord) -> tuple[Any, Any, Any]:
    """The record's agent, task id and data: `extra=` wins over the bound context."""
    agent = getattr(record, "agent", None) or _agent.get()
    task_id = getattr(record, "task_id", None) or _task_id.get()
    return agent, task_id, getattr(record, "data", None) or {}


def _no_redaction(text: str) -> str:
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object a line; every string in it redacted."""

    def __init__(self, redact: Redact = _no_redaction) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        agent, task_id, data = _facts(record)
        line = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "agent": agent,
            "task_id": task_id,
            "message": self.redact(record.getMessage()),
            "data": _redact_value(data, self.redact),
        }
        if record.exc_info:
            line["exception"] = self.redact(self.formatException(record.exc_info))
        return json.dumps(line, default=lambda value: self.redact(str(value)))


class ConsoleFormatter(logging.Formatter):
    """`12:04:01 INFO  fixbot.jobs [task 7 planning] message {data}` for people."""

    def __init__(self, redact: Redact = _no_redaction) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        agent, task_id, data = _facts(record)
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        tags = " ".join(
            str(part) for part in (f"task {task_id}" if task_id else None, agent) if part
        )
        parts = [when, f"{record.levelname:<7}", record.name]
        if tags:
            parts.append(f"[{tags}]")
        parts.append(record.getMessage())
        if data:
            parts.append(json.dumps(data, default=str))
        text = " ".join(parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return self.redact(text)


def _redact_value(value: Any, redact: Redact) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {str(key): _redact_value(item, redact) for key, item in value.items()}
    if isinstance(value, list | tuple | set):
        return [_redact_value(item, redact) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


def setup_logging(
    log_format: str, redactor: Redact | None = None, level: int = logging.INFO
) -> None:
    """Send every logger's records to stderr in `log_format` ("json" or "console")."""
    redact = redactor or _no_redaction
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(redact))
    else:
        handler.setFormatter(ConsoleFormatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # Python warnings become records too: every line is JSON


class WithoutTraceback(logging.Filter):
    """Keeps a library's retry-loop records to their one line: the traceback is dropped
    (the message already names the error), so an outage logs a line per try, not pages."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.levelno < logging.CRITICAL:
            error = record.exc_info[1]
            record.exc_info = None
            record.exc_text = None
            message = record.getMessage()
            if error is not None and str(error) not in message:
                message = f"{message} ({type(error).__name__}: {error})"
            record.msg, record.args = message, None
        return True

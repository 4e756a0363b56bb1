"""The one redaction filter everything Fixbot posts passes through (Slack, pull requests, Jira).

A `Redactor` knows the secret values Fixbot holds (its own tokens, webhook secrets, the
database password, read from settings) and the shapes common tokens take; it replaces both
with `[redacted]`. It errs towards hiding: an agent's output or a stack trace can carry
anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

REDACTED = "[redacted]"

# A known value shorter than this is hidden only where it stands alone (not inside a word),
# so that a short secret is still caught without hiding parts of ordinary words.
WHOLE_WORD_BELOW = 8

# Patterns whose whole match is the secret.
_TOKEN_SHAPES: tuple[re.Pattern[str], ...] = (
    # Private key blocks; an unterminated one (a cut-off log) is hidden to the end of the text.
    re.compile(
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----"
        r"(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----|.*)",
        re.DOTALL,
    ),
    # Slack: bot, user, app-config, refresh and legacy tokens; app-level tokens.
    re.compile(r"\bxox[abposre]-[A-Za-z0-9-]{6,}"),
    re.compile(r"\bxoxe\.xox[a-z]-[A-Za-z0-9-]{6,}"),
    re.compile(r"\bxapp-[A-Za-z0-9-]{6,}"),
    # GitHub: personal, OAuth, app installation/server, user-to-server, refresh, fine-grained.
    re.compile(r"\bgh[opsur]_[A-Za-z0-9]{16,}"),
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{16,}"),
    # Anthropic API keys and OAuth tokens.
    re.compile(r"\bsk-ant-[A-Za-z0-9_-]{8,}"),
    # AWS access key ids (long-lived and temporary).
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
)

# Patterns whose group 1 is kept (the label) and the rest is the secret.
_LABELLED: tuple[re.Pattern[str], ...] = (
    # Authorization / Proxy-Authorization header values, also as a dict or JSON entry.
    re.compile(r"""((?:Proxy-)?Authorization['"]?\s*[:=]\s*['"]?)[^'"\r\n]+""", re.IGNORECASE),
    re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]{4,}", re.IGNORECASE),
    # user:password@ in any scheme://authority; the user may be empty (redis://:password@).
    re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s:@<>|]*:[^/\s@<>|]*@"),
)
_URL_CREDENTIALS = _LABELLED[-1]


class Redactor:
    """Hides known secret values and token-shaped strings: `redactor(text) -> text`."""

    def __init__(self, secret_values: Iterable[str]) -> None:
        values: set[str] = set()
        for value in secret_values:
            value = (value or "").strip()
            if value:
                values.add(value)
                # The same secret as it appears inside a URL or a form body.
                values.add(quote(value, safe=""))
        # Longest first, so a secret that contains another is hidden whole.
        ordered = sorted(values, key=lambda v: (-len(v), v))
        self._values: re.Pattern[str] | None = (
            re.compile("|".join(_value_pattern(v) for v in ordered)) if ordered else None
        )

    def __call__(self, text: str) -> str:
        if not text:
            return text
        if self._values is not None:
            text = self._values.sub(REDACTED, text)
        for pattern in _TOKEN_SHAPES:
            text = pattern.sub(REDACTED, text)
        for pattern in _LABELLED:
            replacement = r"\1" + REDACTED + ("@" if pattern is _URL_CREDENTIALS else "")
            text = pattern.sub(replacement, text)
        return text

    def holds_secret_value(self, text: str) -> bool:
        """Whether `text` carries one of Fixbot's own secret values verbatim."""
        return self._values is not None and self._values.search(text) is not None


def _value_pattern(value: str) -> str:
    if len(value) >= WHOLE_WORD_BELOW:
        return re.escape(value)
    return rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])"


# Slack's length limits for a text object, by the type of the element holding it.
_TEXT_LIMITS = {"header": 150, "button": 75}
_DEFAULT_TEXT_LIMIT = 3000


def redact_blocks(
    blocks: list[dict[str, Any]], redactor: Callable[[str], str]
) -> list[dict[str, Any]]:
    """A copy of Block Kit JSON with every "text" string passed through `redactor`.

    A replacement can be longer than what it hides, so a text that grows past Slack's limit
    for its element is cut back to it.
    """
    return [_redact_value(block, redactor, _DEFAULT_TEXT_LIMIT) for block in blocks]


def _redact_value(value: Any, redactor: Callable[[str], str], limit: int) -> Any:
    if isinstance(value, list):
        return [_redact_value(item, redactor, limit) for item in value]
    if not isinstance(value, dict):
        return value
    limit = _TEXT_LIMITS.get(value.get("type", ""), limit)
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key == "text" and isinstance(item, str):
            redacted = redactor(item)
            if len(redacted) > limit and len(redacted) > len(item):
                redacted = redacted[: limit - 1] + "…"
            out[key] = redacted
        else:
            out[key] = _redact_value(item, redactor, limit)
    return out

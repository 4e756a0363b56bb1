"""Recognising Sentry alerts in Slack messages and webhook payloads (pure functions).

Formats understood, each taken from Sentry's own code:

- Block Kit issue alerts (Sentry's current Slack integration): a section whose mrkdwn is
  `:red_circle: <https://…/issues/142/?referrer=slack…|*Title*>` with `block_id`
  `{"issue": 142, "rule": …}`, and a context block ending `Short ID: DAFFY-5`; the
  message's `text` is `[project] Title`.
- Legacy attachments (older installs): `title`, `title_link` (the issue URL with
  `?referrer=slack`), `callback_id` `{"issue":142}`, `footer` `DAFFY-5 via <…|rule>`,
  `fallback` `[project] Title`.
- Anything else carrying a Sentry issue URL (a person pasting a link, another bot).
- The integration platform's webhooks (payloads in tests/payloads/sentry/, from Sentry's
  docs): `issue` (`data.issue` with `id`, `shortId`, `title`, `web_url`, `project.slug`;
  `action` `created`, or `unresolved` when it regressed or was reopened), `event_alert`
  (`action` `triggered`, `data.event` with `issue_id`, `web_url`, `title`, `level`) and
  `error` (`action` `created`, `data.error` likewise).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from html import unescape
from typing import Any

from bot.integrations.sentry import SHORT_ID, SHORT_ID_PATTERN, parse_issue_url

_URL = re.compile(r"https?://[^\s|<>\"']+")
_SHORT_ID_LABEL = re.compile(rf"Short ID:\s*\*?({SHORT_ID_PATTERN})")
_FALLBACK = re.compile(r"^\[([\w.-]+)\]\s+(.+)$", re.DOTALL)
_LINK_TITLE = re.compile(r"<https?://[^|>]+\|\*?(.+?)\*?>")


@dataclass(frozen=True)
class SentryAlert:
    """One Sentry issue named by an alert; `key` is what makes repeats one task."""

    issue_id: str | None  # Sentry's numeric group id, when the alert carries it
    short_id: str | None  # SHOP-1A
    url: str | None
    title: str | None = None
    project: str | None = None
    regressed: bool = False
    level: str | None = None  # fatal, error, warning…, when the alert says

    @property
    def key(self) -> str:
        return self.issue_id or (self.short_id or "").upper()

    @property
    def ref_key(self) -> str:
        """What `/fix` would take for this issue: the short id, else the numeric id."""
        return self.short_id or self.issue_id or ""


def recognise_message(message: Mapping[str, Any], *, sentry_url: str | None) -> SentryAlert | None:
    """The Sentry issue a Slack message is about, or None when it names none."""
    return (
        _from_blocks(message, sentry_url)
        or _from_attachments(message, sentry_url)
        or _from_any_url(message, sentry_url)
    )


def recognise_webhook(resource: str, payload: Mapping[str, Any]) -> SentryAlert | None:
    """A Sentry integration-platform webhook that should start work, by its resource.

    `issue` created, or unresolved (a regression, or an issue reopened); `event_alert`
    (an alert rule whose action is this integration) and `error` (an error event) name
    their issue by `issue_id` and `web_url`.
    """
    data = payload.get("data")
    if not isinstance(data, Mapping):
        return None
    action = payload.get("action")
    if resource == "issue" and action in ("created", "unresolved"):
        return _from_issue(data.get("issue"), regressed=action == "unresolved")
    if resource == "event_alert" and action == "triggered":
        return _from_event(data.get("event"))
    if resource == "error" and action == "created":
        return _from_event(data.get("error"))
    return None


def _from_issue(issue: Any, *, regressed: bool) -> SentryAlert | None:
    if not isinstance(issue, Mapping):
        return None
    project = issue.get("project")
    short_id = issue.get("shortId")
    issue_id = issue.get("id")
    if not issue_id and not short_id:
        return None
    return SentryAlert(
        issue_id=str(issue_id) if issue_id else None,
        short_id=str(short_id) if short_id else None,
        url=_clean(str(issue.get("web_url") or issue.get("permalink") or "")) or None,
        title=str(issue.get("title") or "") or None,
        project=str(project.get("slug")) if isinstance(project, Mapping) else None,
        regressed=regressed,
        level=str(issue.get("level") or "") or None,
    )


def _from_event(event: Any) -> SentryAlert | None:
    """An event (`event_alert`, `error`): its issue id, and the issue's page from `web_url`."""
    if not isinstance(event, Mapping) or not event.get("issue_id"):
        return None
    issue_id = str(event["issue_id"])
    web_url = str(event.get("web_url") or "")
    # The event's page is …/issues/<id>/events/<event id>/: the issue's page is its prefix.
    marker = f"/issues/{issue_id}/"
    url = web_url[: web_url.index(marker) + len(marker)] if marker in web_url else None
    return SentryAlert(
        issue_id=issue_id,
        short_id=None,
        url=url,
        title=str(event.get("title") or "") or None,
        level=str(event.get("level") or "") or None,
    )


def sentry_urls(texts: Iterable[str], *, sentry_url: str | None) -> list[tuple[str, str]]:
    """Every (url, issue) pair of Sentry issue URLs in `texts` (Slack-escaped or not)."""
    found: list[tuple[str, str]] = []
    for text in texts:
        for raw in _URL.findall(unescape(text)):
            parsed = parse_issue_url(raw, sentry_url=sentry_url)
            if parsed is not None:
                found.append((raw, parsed.issue))
    return found


# Formats


def _from_blocks(message: Mapping[str, Any], sentry_url: str | None) -> SentryAlert | None:
    blocks = [b for b in message.get("blocks") or [] if isinstance(b, Mapping)]
    issue_id: str | None = None
    for block in blocks:
        marker = _json(block.get("block_id"))
        if isinstance(marker, Mapping) and marker.get("issue") is not None:
            issue_id = str(marker["issue"])
            break
    texts = list(_block_texts(blocks))
    urls = sentry_urls(texts, sentry_url=sentry_url)
    if issue_id is None and not urls:
        return None
    short_id = next((m.group(1) for text in texts if (m := _SHORT_ID_LABEL.search(text))), None)
    if issue_id is None:
        _, named = urls[0]
        issue_id, short_id = _split(named, short_id)
    if short_id is None and not urls:
        return None  # a block_id alone is too weak a sign
    project, title = _fallback(str(message.get("text") or ""))
    if title is None:
        title = next((m.group(1) for text in texts if (m := _LINK_TITLE.search(text))), None)
    return SentryAlert(
        issue_id=issue_id,
        short_id=short_id,
        url=_clean(urls[0][0]) if urls else None,
        title=title,
        project=project,
    )


def _from_attachments(message: Mapping[str, Any], sentry_url: str | None) -> SentryAlert | None:
    for attachment in message.get("attachments") or []:
        if not isinstance(attachment, Mapping):
            continue
        link = str(attachment.get("title_link") or "")
        parsed = parse_issue_url(unescape(link), sentry_url=sentry_url) if link else None
        callback = _json(attachment.get("callback_id"))
        issue_id = (
            str(callback["issue"])
            if isinstance(callback, Mapping) and callback.get("issue") is not None
            else None
        )
        if parsed is None and issue_id is None:
            continue
        footer = str(attachment.get("footer") or "").split(" ")[0]
        short_id = footer if SHORT_ID.match(footer) else None
        if issue_id is None and parsed is not None:
            issue_id, short_id = _split(parsed.issue, short_id)
        if parsed is None and short_id is None:
            continue
        project, title = _fallback(str(attachment.get("fallback") or ""))
        return SentryAlert(
            issue_id=issue_id,
            short_id=short_id,
            url=_clean(unescape(link)) if parsed is not None else None,
            title=title or str(attachment.get("title") or "") or None,
            project=project,
        )
    return None


def _from_any_url(message: Mapping[str, Any], sentry_url: str | None) -> SentryAlert | None:
    texts = [str(message.get("text") or "")]
    for attachment in message.get("attachments") or []:
        if isinstance(attachment, Mapping):
            texts += [str(attachment.get(k) or "") for k in ("title_link", "text", "fallback")]
    urls = sentry_urls(texts, sentry_url=sentry_url)
    if not urls:
        return None
    url, named = urls[0]
    issue_id, short_id = _split(named, None)
    return SentryAlert(issue_id=issue_id, short_id=short_id, url=_clean(url))


# Helpers


def _block_texts(blocks: Iterable[Mapping[str, Any]]) -> Iterable[str]:
    for block in blocks:
        text = block.get("text")
        if isinstance(text, Mapping) and isinstance(text.get("text"), str):
            yield text["text"]
        for element in block.get("elements") or []:
            if isinstance(element, Mapping) and isinstance(element.get("text"), str):
                yield element["text"]
        for field in block.get("fields") or []:
            if isinstance(field, Mapping) and isinstance(field.get("text"), str):
                yield field["text"]


def _split(named: str, short_id: str | None) -> tuple[str | None, str | None]:
    """A URL's issue part is a numeric id or a short id."""
    if named.isdigit():
        return named, short_id
    return None, short_id or named.upper()


def _fallback(text: str) -> tuple[str | None, str | None]:
    match = _FALLBACK.match(text.strip())
    if match is None:
        return None, None
    return match.group(1), unescape(match.group(2)).strip()


def _clean(url: str) -> str:
    """The issue URL without Sentry's tracking query (referrer, notification_uuid, …)."""
    return url.split("?", 1)[0]


def _json(value: Any) -> Any:
    if not isinstance(value, str) or not value.startswith("{"):
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None

"""Signed webhooks: `POST /webhooks/sentry`, `/webhooks/github`, `/webhooks/jira`.

Each checks its signature against the raw body first (a bad or missing one is 401 and
nothing else happens), then records the delivery id (a replay of a handled delivery is a
200 no-op), then acts:

- Sentry (integration platform, `Sentry-Hook-Signature`: HMAC-SHA256 hex of the body with
  the client secret; `Request-ID`): an `issue` created or unresolved (regressed), an
  `event_alert` triggered or an `error` created is an alert in the first alert channel.
- GitHub (`X-Hub-Signature-256: sha256=…`; `X-GitHub-Delivery`): a task's pull request
  closed (merged or not) tells its thread, and a merge starts the after-merge follow-up
  (`bot/aftermerge.py`); an `@fixbot approve` comment on it from an approver approves the
  plan (only logins in `github_approvers`; no list: GitHub approvals are off).
- Jira (`JIRA_WEBHOOK_SECRET`: Jira's own `X-Hub-Signature: sha256=…`, or the secret itself
  in `X-Fixbot-Webhook-Secret` or `?secret=`; `X-Atlassian-Webhook-Identifier`): an issue
  created with the `jira_label` label becomes a task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from bot.alerts import recognise_webhook
from bot.config import Settings
from bot.conversation import Conversation
from bot.errors import BadReference
from bot.refs import jira_reference
from bot.tasks import PRIORITY_OTHER, Workflow
from repos.errors import FixbotError
from storage.triggers import first_delivery

log = logging.getLogger(__name__)

APPROVE_COMMENT = re.compile(r"(?:^|\s)@fixbot\s+approve\b", re.IGNORECASE)

Handler = Callable[[web.Request], Awaitable[web.Response]]


def webhook_routes(
    settings: Settings, workflow: Workflow, conversation: Conversation
) -> list[web.RouteDef]:
    """The three webhook routes, for `make_http_app`."""
    hooks = Webhooks(settings, workflow, conversation)
    return [
        web.post("/webhooks/sentry", hooks.sentry),
        web.post("/webhooks/github", hooks.github),
        web.post("/webhooks/jira", hooks.jira),
    ]


def hmac_sha256(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhooks:
    def __init__(self, settings: Settings, workflow: Workflow, conversation: Conversation) -> None:
        self.settings = settings
        self.workflow = workflow
        self.conversation = conversation

    # Sentry

    async def sentry(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = _hmac_or_none(self.settings.sentry_webhook_secret, body)
        given = request.headers.get("Sentry-Hook-Signature", "")
        if expected is None or not hmac.compare_digest(expected, given):
            return _unauthorized()
        payload = _json(body)
        delivery = request.headers.get("Request-ID") or hashlib.sha256(body).hexdigest()
        if payload is None:
            return web.json_response({"ok": False, "error": "body is not JSON"}, status=400)
        if not await self._first_delivery("sentry", delivery):
            return _replayed()
        resource = request.headers.get("Sentry-Hook-Resource", "")
        alert = recognise_webhook(resource, payload)
        if alert is None:
            return _ignored(f"{resource or 'unknown'} webhook names no new or regressed issue")
        if not self.settings.alert_channels:
            return _ignored("no alert_channels to post in")
        channel = self.settings.alert_channels[0]
        await self.conversation.on_alert(alert, channel=channel, message_ts=None)
        return _ok()

    # GitHub

    async def github(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = _hmac_or_none(self.settings.github_webhook_secret, body)
        given = request.headers.get("X-Hub-Signature-256", "")
        if expected is None or not hmac.compare_digest(f"sha256={expected}", given):
            return _unauthorized()
        payload = _json(body)
        if payload is None:
            return web.json_response({"ok": False, "error": "body is not JSON"}, status=400)
        delivery = request.headers.get("X-GitHub-Delivery") or hashlib.sha256(body).hexdigest()
        if not await self._first_delivery("github", delivery):
            return _replayed()
        event = request.headers.get("X-GitHub-Event", "")
        repo = str(_dig(payload, "repository", "full_name") or "")
        if event == "pull_request" and payload.get("action") == "closed":
            pull = payload.get("pull_request") or {}
            task = await self.workflow.task_for_pull(repo, _number(pull.get("number")))
            if task is None:
                return _ignored("not a Fixbot pull request")
            merged = bool(pull.get("merged"))
            by = _dig(pull, "merged_by", "login") if merged else None
            by = by or _dig(payload, "sender", "login")
            await self.workflow.pull_request_closed(task, merged=merged, by=by)
            if merged:
                commit = pull.get("merge_commit_sha")
                await self.conversation.after_merge.merged(
                    task, merge_commit=str(commit) if commit else None, by=by
                )
            return _ok()
        if event == "issue_comment" and payload.get("action") == "created":
            issue = payload.get("issue") or {}
            comment = str(_dig(payload, "comment", "body") or "")
            if not issue.get("pull_request") or not APPROVE_COMMENT.search(comment):
                return _ignored("not an approval on a pull request")
            task = await self.workflow.task_for_pull(repo, _number(issue.get("number")))
            if task is None:
                return _ignored("not a Fixbot pull request")
            login = str(_dig(payload, "comment", "user", "login") or "")
            if not self.workflow.policy.may_approve(login, task, github=True):
                # Only logins listed in github_approvers approve; no list: GitHub approvals off.
                return web.json_response({"ok": False, "error": "not an approver"}, status=200)
            try:
                await self.workflow.approve_as(task.id, f"{login} on GitHub")
            except FixbotError as error:
                return web.json_response({"ok": False, "error": str(error)})
            return _ok()
        return _ignored(f"event {event or 'unknown'} is not one Fixbot acts on")

    # Jira

    async def jira(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not self._jira_signed(request, body):
            return _unauthorized()
        payload = _json(body)
        if payload is None:
            return web.json_response({"ok": False, "error": "body is not JSON"}, status=400)
        delivery = (
            request.headers.get("X-Atlassian-Webhook-Identifier")
            or hashlib.sha256(body).hexdigest()
        )
        if not await self._first_delivery("jira", delivery):
            return _replayed()
        if payload.get("webhookEvent") != "jira:issue_created":
            return _ignored("not an issue created")
        issue = payload.get("issue") or {}
        key = str(issue.get("key") or "")
        fields = issue.get("fields") or {}
        labels = [str(label).lower() for label in fields.get("labels") or []]
        if self.settings.jira_label.lower() not in labels:
            return _ignored(f"no `{self.settings.jira_label}` label")
        try:
            ref = jira_reference(key, self.settings)
        except BadReference:
            return _ignored("project not mapped to a repository")
        if not self.settings.alert_channels:
            return _ignored("no alert channel")
        base = self.settings.jira_url
        url = f"{base.rstrip('/')}/browse/{key}" if base else None
        ref = dataclasses.replace(ref, url=url)
        await self.workflow.create_task(
            ref, channel=self.settings.alert_channels[0], user=None, priority=PRIORITY_OTHER
        )
        return _ok()

    def _jira_signed(self, request: web.Request, body: bytes) -> bool:
        secret = self.settings.jira_webhook_secret
        value = secret.get_secret_value() if secret is not None else ""
        if not value:
            return False
        signature = request.headers.get("X-Hub-Signature", "")
        if signature:
            return hmac.compare_digest(f"sha256={hmac_sha256(value, body)}", signature)
        given = request.headers.get("X-Fixbot-Webhook-Secret") or request.query.get("secret", "")
        return bool(given) and hmac.compare_digest(given, value)

    # Replays

    async def _first_delivery(self, source: str, delivery: str) -> bool:
        """Record a delivery id; False when it was handled before."""
        return await first_delivery(self.workflow.sessions, source, delivery)


def _hmac_or_none(secret: SecretStr | None, body: bytes) -> str | None:
    """The body's signature, or None when no secret is set (an empty one counts as unset)."""
    value = secret.get_secret_value() if secret is not None else ""
    return hmac_sha256(value, body) if value else None


def _json(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _dig(data: Mapping[str, Any], *keys: str) -> Any:
    value: Any = data
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _number(value: Any) -> int:
    """A pull request number from a payload; 0 (no such pull) when it is not one."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _unauthorized() -> web.Response:
    return web.json_response({"ok": False, "error": "bad or missing signature"}, status=401)


def _replayed() -> web.Response:
    return web.json_response({"ok": True, "replayed": True})


def _ignored(reason: str) -> web.Response:
    return web.json_response({"ok": True, "ignored": reason})


def _ok() -> web.Response:
    return web.json_response({"ok": True})

"""Bolt listeners, one module per surface. Each acknowledges, delegates, and answers."""

from __future__ import annotations

from aiohttp import ClientSession
from slack_bolt.async_app import AsyncApp

from bot.conversation import Conversation
from bot.tasks import Workflow
from handlers import actions, commands, home, messages
from handlers.respond import shared_session_respond
from handlers.triggers import once_per_trigger


def register(
    app: AsyncApp, workflow: Workflow, conversation: Conversation, responses: ClientSession
) -> None:
    """Attach every listener to the Bolt app, behind the once-per-trigger check;
    `respond()` answers through the `responses` session."""
    app.middleware(once_per_trigger(workflow.sessions))
    app.middleware(shared_session_respond(responses))
    commands.register(app, workflow)
    actions.register(app, workflow)
    home.register(app, workflow)
    messages.register(app, conversation)

"""Bolt listeners, one module per surface. Each acknowledges, delegates, and answers."""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from bot.conversation import Conversation
from bot.tasks import Workflow
from handlers import actions, commands, home, messages
from handlers.triggers import once_per_trigger


def register(app: AsyncApp, workflow: Workflow, conversation: Conversation) -> None:
    """Attach every listener to the Bolt app, behind the once-per-trigger check."""
    app.middleware(once_per_trigger(workflow.sessions))
    commands.register(app, workflow)
    actions.register(app, workflow)
    home.register(app, workflow)
    messages.register(app, conversation)

"""`/fix REF`: acknowledge at once, parse, start a task or say what was wrong.

`/fix status` and `/fix help` answer only the person who typed them.
"""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot.dashboard import load_status
from bot.refs import ACCEPTED_FORMS, parse_reference
from bot.tasks import Workflow
from handlers.answers import answering

HELP = (
    "*`/fix REF`* plans a fix for a production error in a thread here. "
    f"{ACCEPTED_FORMS}\n"
    "The plan comes with *Approve* (write the fix and open a pull request) and *Reject*; "
    "a failed step offers *Retry* and *Cancel*. Reply in the thread to revise a plan.\n"
    "`/fix status` shows what is running, queued and awaiting approval, and today's spend. "
    "The App Home tab shows the whole dashboard."
)


def register(app: AsyncApp, workflow: Workflow) -> None:
    @app.command("/fix")
    async def fix(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        word = command.get("text", "").strip().lower()
        if word in ("status", "help"):
            if word == "help":
                text = HELP
            else:
                text = (await load_status(workflow.sessions, workflow.settings)).summary()
            await respond(text=text, response_type="ephemeral")
            return
        async with answering(respond):
            ref = parse_reference(command.get("text", ""), workflow.settings)
            await workflow.request_fix(ref, channel=command["channel_id"], user=command["user_id"])

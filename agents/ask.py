"""The agent's way to ask a person: an in-process MCP tool, `ask_in_thread(question)`.

The tool itself only calls `ask`, which the workflow supplies (post the question in the
task's thread, wait a bounded time for a reply); here it is wrapped as an SDK MCP server
that `AgentStep.mcp_servers` carries to Claude Code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from claude_agent_sdk import create_sdk_mcp_server, tool

from agents.prompts import fence

SERVER = "fixbot"
ASK_TOOL = f"mcp__{SERVER}__ask_in_thread"
NO_ANSWER = "No answer; proceed with your best assumption and say so in your result."

Ask = Callable[[str], Awaitable[str | None]]


def ask_server(ask: Ask) -> dict[str, Any]:
    """The MCP server (an SDK config dict of type "sdk") with the one `ask_in_thread` tool."""

    @tool(
        "ask_in_thread",
        "Ask the people in the task's Slack thread one short question when you cannot "
        "decide without them (intended behaviour, a product choice). It waits a bounded "
        "time for an answer; without one, proceed with your best assumption and say so.",
        {"question": str},
    )
    async def ask_in_thread(args: dict[str, Any]) -> dict[str, Any]:
        question = str(args.get("question") or "").strip()
        if not question:
            return {"content": [{"type": "text", "text": "Ask a question."}], "is_error": True}
        answer = await ask(question[:2000])
        text = f"Answer from the thread:\n{fence('slack-thread', answer)}" if answer else NO_ANSWER
        return {"content": [{"type": "text", "text": text}]}

    return dict(create_sdk_mcp_server(SERVER, tools=[ask_in_thread]))

"""Session transcripts in the database: the SDK's conformance suite, and a resume from it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from claude_agent_sdk import project_key_for_directory
from claude_agent_sdk.testing import run_session_store_conformance
from claude_agent_sdk.types import SessionKey
from fakes.anthropic import ScriptedModel, text
from sqlalchemy import delete, event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agents.runner import AgentEnvironment, AgentStep, run_agent_step
from storage.sessions import DatabaseSessionStore
from storage.tables import SessionEntry

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def model() -> AsyncIterator[ScriptedModel]:
    async with ScriptedModel() as scripted:
        yield scripted


async def test_the_store_passes_the_sdk_conformance_suite(sessions: Sessions) -> None:
    async def empty_store() -> DatabaseSessionStore:
        # The suite wants a fresh store for each contract: the same table, emptied.
        async with sessions.begin() as session:
            await session.execute(delete(SessionEntry))
        return DatabaseSessionStore(sessions)

    await run_session_store_conformance(empty_store)


async def test_lines_appended_one_by_one_are_written_together(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    store = DatabaseSessionStore(sessions)
    key: SessionKey = {"project_key": "p", "session_id": "s"}
    commits: list[object] = []
    event.listen(engine.sync_engine, "commit", commits.append)

    for number in range(20):
        await store.append(key, [{"type": "user", "n": number}])
    assert await DatabaseSessionStore(sessions).load(key) is None  # another replica: not yet
    await store.flush()

    assert len(commits) == 1
    assert await DatabaseSessionStore(sessions).load(key) == [
        {"type": "user", "n": number} for number in range(20)
    ]


async def test_a_session_resumes_from_the_database_in_an_empty_home(
    sessions: Sessions, model: ScriptedModel, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    model.script(
        [[text("Noted: the word is PAPAYA.")], [text("The word was PAPAYA.")]],
        match="TASK-remember",
    )

    def replica(home: str) -> AgentEnvironment:
        """Each replica has its own store: what it has not written, the other cannot see."""
        return AgentEnvironment(
            home=tmp_path / home,
            anthropic_api_key="sk-ant-test",
            base_url=model.base_url,
            extra={"CLAUDE_CODE_MAX_RETRIES": "0"},
            session_store=DatabaseSessionStore(sessions),
        )

    reported: list[str] = []

    async def record(session_id: str) -> None:
        reported.append(session_id)

    first = await run_agent_step(
        AgentStep(name="planning", prompt="TASK-remember: the word is PAPAYA.", cwd=repo),
        replica("home-a"),
        on_session=record,
    )
    key: SessionKey = {
        "project_key": project_key_for_directory(repo),
        "session_id": first.session_id,
    }
    assert reported == [first.session_id]
    assert await DatabaseSessionStore(sessions).load(key)  # written by the step's end

    requests_before = len(model.requests)
    second = await run_agent_step(
        AgentStep(
            name="planning",
            prompt="Which word was it?",
            cwd=repo,
            resume_session_id=first.session_id,
        ),
        replica("home-b"),
    )

    assert second.outcome == "success"
    assert second.text == "The word was PAPAYA."
    resumed = next(r for r in model.requests[requests_before:] if r.get("tools"))
    said = [str(message["content"]) for message in resumed["messages"]]
    assert "TASK-remember: the word is PAPAYA." in said[0]
    assert any("Noted: the word is PAPAYA." in content for content in said)
    assert "Which word was it?" in said[-1]
    # Home B never held the first conversation: it came from the database.
    assert not list((tmp_path / "home-b").rglob(f"{first.session_id}*"))
    assert model.unexpected == []

"""Claude Code session transcripts in Fixbot's database, so any replica can resume any session.

`DatabaseSessionStore` is claude-agent-sdk's `SessionStore` over the `session_entries`
table: the SDK hands it each transcript line the CLI writes (`append`) and, to resume,
reads a whole transcript back into a temporary config directory for the CLI (`load`,
`list_subkeys`). Entries are opaque JSON; `seq` keeps them in append order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from claude_agent_sdk.types import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStore,
    SessionStoreEntry,
    SessionStoreListEntry,
)
from sqlalchemy import ColumnElement, and_, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.tables import SessionEntry

__all__ = ["DatabaseSessionStore"]

MAIN = ""  # the subpath of a session's main transcript


class DatabaseSessionStore(SessionStore):
    """The SDK's `SessionStore` on SQLite or PostgreSQL.

    Appends to one transcript are expected from one process at a time (the replica
    running its step); two racing appends collide on (key, seq) and the loser fails,
    which the SDK retries.
    """

    # Not kept. The protocol's own default, named here so type checkers see the protocol
    # complete; the SDK recognises it as absent and lists sessions with list_sessions.
    list_session_summaries = SessionStore.list_session_summaries

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        if not entries:
            return
        async with self.sessions.begin() as session:
            last = await session.scalar(select(func.max(SessionEntry.seq)).where(_is(key)))
            first = 0 if last is None else last + 1
            session.add_all(
                SessionEntry(
                    project_key=key["project_key"],
                    session_id=key["session_id"],
                    subpath=key.get("subpath", MAIN),
                    seq=first + offset,
                    entry=dict(entry),
                )
                for offset, entry in enumerate(entries)
            )

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(SessionEntry.entry).where(_is(key)).order_by(SessionEntry.seq)
            )
            entries: list[Any] = list(rows)
        return entries or None

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        """Main transcripts of `project_key`, with their last write time in epoch ms."""
        query = (
            select(SessionEntry.session_id, func.max(SessionEntry.created_at))
            .where(SessionEntry.project_key == project_key, SessionEntry.subpath == MAIN)
            .group_by(SessionEntry.session_id)
        )
        async with self.sessions() as session:
            rows = (await session.execute(query)).all()
        return [{"session_id": session_id, "mtime": _epoch_ms(at)} for session_id, at in rows]

    async def delete(self, key: SessionKey) -> None:
        """Delete a transcript; deleting a main transcript deletes its subagents' too."""
        where = _is(key) if "subpath" in key else _is_session(key)
        async with self.sessions.begin() as session:
            await session.execute(delete(SessionEntry).where(where))

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        query = (
            select(SessionEntry.subpath)
            .where(_is_session(key), SessionEntry.subpath != MAIN)
            .distinct()
            .order_by(SessionEntry.subpath)
        )
        async with self.sessions() as session:
            return list(await session.scalars(query))


def _is_session(key: SessionKey | SessionListSubkeysKey) -> ColumnElement[bool]:
    """Every transcript of one session: the main one and its subagents'."""
    return and_(
        SessionEntry.project_key == key["project_key"],
        SessionEntry.session_id == key["session_id"],
    )


def _is(key: SessionKey) -> ColumnElement[bool]:
    """Exactly the transcript `key` names."""
    return and_(_is_session(key), SessionEntry.subpath == key.get("subpath", MAIN))


def _epoch_ms(at: datetime) -> int:
    # SQLite hands back naive datetimes; they were written in UTC.
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return int(at.timestamp() * 1000)

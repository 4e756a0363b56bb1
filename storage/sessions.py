"""Claude Code session transcripts in Fixbot's database, so any replica can resume any session.

`DatabaseSessionStore` is claude-agent-sdk's `SessionStore` over the `session_entries`
table: the SDK hands it each transcript line the CLI writes (`append`) and, to resume,
reads a whole transcript back into a temporary config directory for the CLI (`load`,
`list_subkeys`). Entries are opaque JSON; `seq` keeps them in append order.

Appends are batched: lines wait up to FLUSH_INTERVAL_S (or until FLUSH_LINES are
waiting) and are written together, one transaction for all transcripts, instead of one
per line. The runner calls `flush` when a step ends, and reads flush first, so a session
resumed after its step (on any replica) has every line; a replica that dies mid-step
loses at most the last interval's lines.
"""

from __future__ import annotations

import asyncio
import logging
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

log = logging.getLogger(__name__)

MAIN = ""  # the subpath of a session's main transcript
FLUSH_INTERVAL_S = 1.0
FLUSH_LINES = 200

_Key = tuple[str, str, str]  # project_key, session_id, subpath


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
        self._pending: dict[_Key, list[SessionStoreEntry]] = {}
        self._writing = asyncio.Lock()  # one flush at a time keeps each transcript in order
        self._timer: asyncio.Task[None] | None = None

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        if not entries:
            return
        pending_key = (key["project_key"], key["session_id"], key.get("subpath", MAIN))
        self._pending.setdefault(pending_key, []).extend(entries)
        if sum(map(len, self._pending.values())) >= FLUSH_LINES:
            await self.flush()
        elif self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._flush_soon(), name="transcript-flush")

    async def flush(self) -> None:
        """Write every line appended so far; on failure they stay pending for the next try."""
        async with self._writing:
            pending, self._pending = self._pending, {}
            if not pending:
                return
            try:
                async with self.sessions.begin() as session:
                    for key, entries in pending.items():
                        await _write(session, key, entries)
            except BaseException:
                for key, entries in pending.items():  # before anything appended since
                    self._pending[key] = entries + self._pending.get(key, [])
                raise

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_INTERVAL_S)
        try:
            await self.flush()
        except Exception as error:  # the database is away: the next append or step end retries
            log.warning("transcript lines not written yet: %s", str(error).splitlines()[0])

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        await self.flush()
        async with self.sessions() as session:
            rows = await session.scalars(
                select(SessionEntry.entry).where(_is(key)).order_by(SessionEntry.seq)
            )
            entries: list[Any] = list(rows)
        return entries or None

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        """Main transcripts of `project_key`, with their last write time in epoch ms."""
        await self.flush()
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
        await self.flush()
        where = _is(key) if "subpath" in key else _is_session(key)
        async with self.sessions.begin() as session:
            await session.execute(delete(SessionEntry).where(where))

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        await self.flush()
        query = (
            select(SessionEntry.subpath)
            .where(_is_session(key), SessionEntry.subpath != MAIN)
            .distinct()
            .order_by(SessionEntry.subpath)
        )
        async with self.sessions() as session:
            return list(await session.scalars(query))


async def _write(session: AsyncSession, key: _Key, entries: list[SessionStoreEntry]) -> None:
    project_key, session_id, subpath = key
    where = _is({"project_key": project_key, "session_id": session_id, "subpath": subpath})
    last = await session.scalar(select(func.max(SessionEntry.seq)).where(where))
    first = 0 if last is None else last + 1
    session.add_all(
        SessionEntry(
            project_key=project_key,
            session_id=session_id,
            subpath=subpath,
            seq=first + offset,
            entry=dict(entry),
        )
        for offset, entry in enumerate(entries)
    )


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

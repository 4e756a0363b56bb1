"""Fixtures: `world` builds the local servers and a repository; tests start the real app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import Listener
from memory import Machine, build_machine
from world import World, make_world

# The real PostgreSQL (and both-engines) fixtures: database_url, postgres_database, engine…
pytest_plugins = ["postgres"]


# Tests that start Fixbot itself run for seconds; the rest for milliseconds.
STARTS_FIXBOT = {"world", "replicas_world", "local"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the longest tests first: the ones marked `long`, then the others that start
    Fixbot, then the in-process ones. `make test` hands the tests out one at a time
    (`--dist load --maxschedchunk 1`), so the quick ones fill the workers' last minutes
    instead of one long test running alone at the end."""

    def order(item: pytest.Item) -> int:
        if item.get_closest_marker("long"):
            return 0
        fixtures = set(getattr(item, "fixturenames", ()))
        return 1 if fixtures & STARTS_FIXBOT or item.path.name == "test_local_page.py" else 2

    items.sort(key=order)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with make_world(tmp_path) as built:
        yield built


@pytest.fixture
async def machine(tmp_path: Path) -> AsyncIterator[Machine]:
    """The task machinery in-process on the in-memory seams (tests/memory.py)."""
    async with build_machine(tmp_path) as built:
        yield built


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    """A `Listener` on a free port of the host's loopback."""
    recorder = Listener()
    server = await asyncio.start_server(recorder.serve, "127.0.0.1", 0)
    recorder.port = server.sockets[0].getsockname()[1]
    async with server:
        yield recorder

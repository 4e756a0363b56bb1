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
    """Run the tests that start Fixbot first: under `pytest -n`, the quick ones then fill
    the workers' last minutes instead of one long test running alone at the end."""

    def starts_fixbot(item: pytest.Item) -> bool:
        fixtures = set(getattr(item, "fixturenames", ()))
        return bool(fixtures & STARTS_FIXBOT) or item.path.name == "test_local_page.py"

    items.sort(key=lambda item: not starts_fixbot(item))


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

"""Fixtures: `world` builds the local servers and a repository; tests start the real app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from memory import Machine, build_machine
from world import World, make_world

# The real PostgreSQL (and both-engines) fixtures: database_url, postgres_database, engine…
pytest_plugins = ["postgres"]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with make_world(tmp_path) as built:
        yield built


@pytest.fixture
async def machine(tmp_path: Path) -> AsyncIterator[Machine]:
    """The task machinery in-process on the in-memory seams (tests/memory.py)."""
    async with build_machine(tmp_path) as built:
        yield built

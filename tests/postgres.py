"""A real PostgreSQL 15 for the test session, and a fresh database for each test.

The server comes from Debian's package (`.ci/run` installs it): a throwaway cluster in a
temporary folder, on 127.0.0.1 and a free port, with fsync off. Without the binaries the
PostgreSQL tests skip, unless FIXBOT_REQUIRE_POSTGRES=1 (CI), where they fail instead.

tests/conftest.py loads this module as a pytest plugin, so every test module can use them.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import free_port
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from storage.db import create_engine, migrate, sessionmaker

PG_BIN = Path(os.environ.get("FIXBOT_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "postgres"
_database_numbers = itertools.count(1)


@dataclass(frozen=True)
class PostgresServer:
    """A running cluster: where it listens and how to reach it as the superuser."""

    host: str
    port: int

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name`; returns its `postgresql+asyncpg://` URL."""
        _run([str(PG_BIN / "createdb"), *self._client_args(), name])
        return self.url(name)

    def _client_args(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", SUPERUSER]


def _unavailable(reason: str) -> None:
    if os.environ.get("FIXBOT_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required (FIXBOT_REQUIRE_POSTGRES=1): {reason}")
    pytest.skip(f"PostgreSQL not available: {reason}")


def _run(args: list[str], as_user: str | None = None) -> None:
    # The server refuses to run as root, so as root its commands run as the postgres user.
    if as_user is not None:
        args = ["runuser", "-u", as_user, "--", *args]
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def _server_user() -> str | None:
    """Who runs the server: ourselves, or `postgres` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        _unavailable("running as root and there is no 'postgres' user to run the server")
    return SUPERUSER


@contextmanager
def _cluster() -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL cluster; stop it and delete its folder on exit."""
    for binary in ("initdb", "pg_ctl", "createdb"):
        if not (PG_BIN / binary).is_file():
            _unavailable(f"{PG_BIN / binary} is missing (apt-get install postgresql)")
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="fixbot-pg-"))
    data = root / "data"
    if user is not None:
        shutil.chown(root, user=user)
    pg_ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust"]
        _run([*initdb, "--encoding=UTF8", "--locale=C", "--no-sync"], as_user=user)
        port = free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        log = root / "server.log"
        try:
            _run([*pg_ctl, "-l", str(log), "-o", options, "-w", "-t", "30", "start"], user)
        except subprocess.CalledProcessError as error:
            server_log = log.read_text() if log.exists() else ""
            pytest.fail(f"PostgreSQL did not start: {error.stderr!r}\n{server_log}")
        started = True
        yield PostgresServer(host="127.0.0.1", port=port)
    finally:
        if started:
            _run([*pg_ctl, "-m", "fast", "-w", "-t", "30", "stop"], as_user=user)
        shutil.rmtree(root, ignore_errors=True)


class _SharedCluster:
    """One cluster for the whole session.

    Every test module that imports the fixtures gets its own copy of a session fixture,
    so the copies share this one cluster; the last to finish stops it.
    """

    def __init__(self) -> None:
        self.server: PostgresServer | None = None
        self.session_url: str | None = None
        self.users = 0
        self.stack = ExitStack()

    @contextmanager
    def use(self) -> Iterator[PostgresServer]:
        if self.server is None:
            self.server = self.stack.enter_context(_cluster())
        self.users += 1
        try:
            yield self.server
        finally:
            self.users -= 1
            if self.users == 0:
                self.server = self.session_url = None
                self.stack.close()


_shared = _SharedCluster()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster for the session, stopped and deleted afterwards."""
    with _shared.use() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """A `postgresql+asyncpg://` URL to a database shared by the whole session."""
    if _shared.session_url is None:
        _shared.session_url = postgres_server.create_database("fixbot")
    return _shared.session_url


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> str:
    """A URL to a new, empty database of this test's own (test_1, test_2, …)."""
    return postgres_server.create_database(f"test_{next(_database_numbers)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each engine in turn: a SQLite file in tmp_path, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'fixbot.db'}"
    # Looked up lazily so that the SQLite half runs where PostgreSQL is missing.
    return str(request.getfixturevalue("postgres_database"))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated engine on each of the two databases in turn."""
    engine = create_engine(database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return sessionmaker(engine)

"""Worker processes: agent steps run apart from the process that answers Slack.

`fixbot worker` claims jobs from the durable queue and runs them (planning, execution,
after-merge), posting in threads through Slack's Web API; it holds no Socket Mode
connection. `python app.py` starts `workers.processes` of them as its children
(`WorkerProcesses`), so that whatever the agents do, acknowledging Slack shares no
event loop with them. A child gets its settings from the app on stdin (secrets never
pass through the environment) and stops when that pipe closes, that is when the app
is gone. The app restarts a child that dies, and signals its children when it stops a
task (SIGUSR2: check running jobs now); new work reaches them through the database
(storage/wakeups.py), as it reaches other replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess
from pydantic import SecretStr

from bot import wiring
from bot.config import Settings
from bot.jobs import WorkerPool
from bot.logs import setup_logging
from bot.redact import Redactor
from storage.db import sessionmaker

log = logging.getLogger("fixbot")

RESTART_DELAY_S = 1.0  # a child that died is started again after this, doubling to the max
RESTART_DELAY_MAX_S = 30.0
STEADY_S = 60.0  # a child that ran this long before dying starts again without delay
KILL_MARGIN_S = 3.0  # a child still running this long after its grace period is killed


def settings_payload(settings: Settings) -> bytes:
    """The settings as one JSON line, secrets included, for a child's stdin."""
    data = settings.model_dump(mode="json")
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            data[name] = value.get_secret_value()
    return json.dumps(data).encode() + b"\n"


async def serve_worker(settings: Settings, parent: asyncio.StreamReader | None = None) -> None:
    """Run agent steps until SIGTERM/SIGINT, or until `parent` (the app's pipe) closes."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    orphaned = asyncio.Event()
    watching = asyncio.create_task(_until_closed(parent, orphaned, stop)) if parent else None
    engine = wiring.database_engine(settings, runs_steps=True)
    try:
        if parent is None:  # the app brought the schema up to date before it started this
            await wiring.start_database(settings, engine)
        owner = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}-worker"
        queue = wiring.job_queue(settings, sessionmaker(engine), owner)
        pool = WorkerPool(settings, queue)
        parts = wiring.build(settings, queue.sessions, queue, pool)
        try:
            async with wiring.running_pool(parts, pool):
                loop.add_signal_handler(signal.SIGUSR2, pool.beat_now)
                log.info("worker %s claiming jobs", owner)
                await stop.wait()
                if orphaned.is_set():
                    # The app was killed: so are its steps, as if with it; their leases run
                    # out and another replica resumes them.
                    log.warning("the app is gone: stopping running steps now")
                    await pool.stop(0)
                else:
                    log.info("worker stopping: no new work; letting running steps finish")
        finally:
            await parts.aclose()
    finally:
        if watching is not None:
            watching.cancel()
        await engine.dispose()


async def _until_closed(
    parent: asyncio.StreamReader, orphaned: asyncio.Event, stop: asyncio.Event
) -> None:
    await parent.read()  # the app writes nothing more; EOF means it is gone
    orphaned.set()
    stop.set()


async def read_parent_settings() -> tuple[Settings, asyncio.StreamReader]:
    """The settings the app sent on stdin, and the pipe left open to watch."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    line = await reader.readline()
    return Settings(**json.loads(line)), reader


class WorkerProcesses:
    """The app's worker processes: started, signalled, restarted when they die, stopped."""

    def __init__(self, settings: Settings, count: int, metrics_dir: Path) -> None:
        self.settings = settings
        self.count = count
        self.metrics_dir = metrics_dir
        self._children: dict[int, asyncio.subprocess.Process] = {}  # by slot
        self._keepers: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> None:
        # An ignored signal stays ignored through exec: a child signalled before it listens
        # lives (the default is to end the process). The app itself does not use it.
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        self._keepers = [
            asyncio.create_task(self._keep(slot), name=f"worker-process-{slot}")
            for slot in range(self.count)
        ]

    @property
    def alive(self) -> bool:
        """Whether every worker process is running (for /readyz)."""
        running = [child for child in self._children.values() if child.returncode is None]
        return not self._stopping and len(running) == self.count

    def wake(self) -> None:
        """A job was added: the children's job watchers see it in the database."""

    def cancel_task(self, task_id: int) -> None:
        """A task was stopped: its running step, in whichever child, ends now."""
        self._signal(signal.SIGUSR2)

    async def stop(self) -> None:
        """SIGTERM every child; each lets its running steps finish within the grace period."""
        self._stopping = True
        for keeper in self._keepers:
            keeper.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)
        self._signal(signal.SIGTERM)
        children = list(self._children.values())
        waits = [asyncio.create_task(child.wait()) for child in children]
        if waits:
            grace_s = self.settings.limits.shutdown_grace_s
            await asyncio.wait(waits, timeout=grace_s + KILL_MARGIN_S)
        for child in children:
            if child.returncode is None:
                log.warning("worker process %s did not stop in time; killing it", child.pid)
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()
            multiprocess.mark_process_dead(child.pid, str(self.metrics_dir))

    def _signal(self, signum: int) -> None:
        for child in self._children.values():
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)

    async def _keep(self, slot: int) -> None:
        """Run one child, and start it again whenever it dies, with a growing delay."""
        delay = RESTART_DELAY_S
        while True:
            child = await self._spawn()
            self._children[slot] = child
            started = time.monotonic()
            code = await child.wait()
            multiprocess.mark_process_dead(child.pid, str(self.metrics_dir))
            if time.monotonic() - started >= STEADY_S:
                delay = RESTART_DELAY_S
            log.warning(
                "worker process %s exited with %s; starting another in %.0f s",
                child.pid,
                code,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX_S)

    async def _spawn(self) -> asyncio.subprocess.Process:
        env: dict[str, Any] = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.cli",
            "worker",
            "--from-app",
            stdin=asyncio.subprocess.PIPE,
            env=env,
        )
        assert child.stdin is not None
        child.stdin.write(settings_payload(self.settings))
        await child.stdin.drain()
        return child


def main(*, from_app: bool) -> int:
    """`fixbot worker`: 0 after a stop signal, 2 when a setting is wrong or the database is
    away. `from_app`: started by `python app.py`, which sends the settings on stdin."""
    if from_app:
        asyncio.run(_serve_for_app())
        return 0
    return wiring.run_process(serve_worker)


async def _serve_for_app() -> None:
    settings, parent = await read_parent_settings()
    setup_logging(settings.log_format, Redactor(settings.secret_values()))
    await serve_worker(settings, parent)

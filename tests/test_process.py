"""repos/process.py: every program Fixbot starts is bounded, killed with its group, reaped."""

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from repos import process


async def test_output_comes_back_apart_or_merged() -> None:
    argv = ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]

    apart = await process.run(argv, timeout=30)
    merged = await process.run(argv, timeout=30, merge_stderr=True)

    assert (apart.exit_code, apart.stdout, apart.stderr) == (3, "out\n", "err\n")
    assert sorted(merged.stdout.splitlines()) == ["err", "out"] and merged.stderr == ""
    assert not apart.timed_out


async def test_a_program_that_cannot_start_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        await process.run([str(tmp_path / "missing")], timeout=30)


async def test_a_cancelled_run_leaves_nothing_of_its_group_running() -> None:
    marker = f"fixbot-cancel-{uuid.uuid4().hex[:8]}"
    sleeper = f"{sys.executable} -c 'import time; time.sleep(60)' {marker}"
    running = asyncio.create_task(process.run(["/bin/sh", "-c", f"{sleeper} & wait"], timeout=120))
    assert await until(lambda: bool(alive_with(marker))), "the program never started"

    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    assert await until(lambda: not alive_with(marker)), alive_with(marker)


def test_programs_inherit_only_the_allowlisted_variables() -> None:
    inherited = {
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "GITHUB_TOKEN": "ghp_x",
        "DATABASE_URL": "postgresql://u:p@db/fixbot",
    }

    assert process.inherited_environment(inherited) == {
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "PATH": os.defpath,
    }


async def until(condition: Callable[[], bool], within_s: float = 30) -> bool:
    """Poll `condition` until it holds or `within_s` passes: a bound generous enough for a
    loaded machine, never a deadline the test races."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def alive_with(marker: str) -> list[str]:
    """Command lines of live (not zombie) processes that mention `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if marker in cmdline and state != "Z":
            found.append(cmdline)
    return found


async def test_a_run_cancelled_as_it_starts_stops_its_whole_group() -> None:
    """Cancelled while asyncio still connects the pipes: without care, asyncio kills the
    program alone and waits for pipes its children hold (here: for an hour)."""
    marker = f"fixbot-starting-{uuid.uuid4().hex[:8]}"
    sleeper = f"{sys.executable} -c 'import time; time.sleep(3600)' {marker}"
    try:
        for attempt in range(40):  # the window is a few loop turns wide: aim at each
            running = asyncio.create_task(
                process.run(["/bin/sh", "-c", f"{sleeper} & wait"], timeout=120)
            )
            for _ in range(1 + attempt % 3):
                await asyncio.sleep(0)
            running.cancel()
            async with asyncio.timeout(30):  # a bound for a stuck test: it ends at once
                with pytest.raises(asyncio.CancelledError):
                    await running
        assert await until(lambda: not alive_with(marker)), alive_with(marker)
    finally:
        if alive_with(marker):
            subprocess.run(["pkill", "-f", marker], check=False)

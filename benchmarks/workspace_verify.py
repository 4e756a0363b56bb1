"""Workspaces and verification on one box: preparing worktrees at once, and verify_fix.

- **prepare ×10**: ten tasks of one repository ask for their worktrees at the same time
  (`asyncio.gather` of `Workspaces.prepare`), the mirror already made; wall time, and the
  `git fetch` processes they started (counted by a `git` first on PATH that notes them).
- **verify_fix**: the stock shop repository of `tests/world.py` with its discount fixed
  and a new test, verified in the real sandbox, as the execution step does. Twice per run:
  the first task on a base commit (its per-test baseline made afresh) and a later task on
  the same base (the baseline kept from the first).

Each run uses a fresh origin, mirror and work folder. Run it from a checkout of the code to
measure (it works with the code before base checkouts were kept warm, too):

    .venv/bin/python benchmarks/workspace_verify.py [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from world import FIXED_PRICING, NEW_TEST, make_shop_repo  # noqa: E402

from repos import verify  # noqa: E402
from repos.config import RepoConfig  # noqa: E402
from repos.sandbox import Sandbox  # noqa: E402
from repos.workspace import Workspaces  # noqa: E402

TEST_COMMAND = f"{sys.executable} -m pytest -q -p no:cacheprovider"
TASKS = 10


def count_fetches(folder: Path) -> Path:
    """Put a `git` first on PATH that notes each `git fetch` in the returned log."""
    real = shutil.which("git")
    wrapper = folder / "bin" / "git"
    wrapper.parent.mkdir()
    log = folder / "fetches.log"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'for arg in "$@"; do [ "$arg" = fetch ] && echo fetch >> {log} && break; done\n'
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    os.environ["PATH"] = f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}"
    return log


def fetches(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


async def prepare_at_once(root: Path, log: Path) -> tuple[float, int]:
    origin = make_shop_repo(root)
    repo = RepoConfig(name="acme/shop", clone_url=f"file://{origin}", default_branch="main")
    workspaces = Workspaces(root / "work")
    await workspaces.prepare(repo, "fixbot/warm-up")  # the mirror is made once, not timed
    before = fetches(log)
    started = time.perf_counter()
    await asyncio.gather(
        *(workspaces.prepare(repo, f"fixbot/shop-{n}-at-once") for n in range(TASKS))
    )
    return time.perf_counter() - started, fetches(log) - before


async def verify_twice(root: Path) -> tuple[float, float]:
    origin = make_shop_repo(root)
    repo = RepoConfig(name="acme/shop", clone_url=f"file://{origin}", default_branch="main")
    workspaces = Workspaces(root / "work")
    warm: dict[str, Any] = {}
    if "checkouts" in inspect.signature(verify.verify_fix).parameters:
        warm["checkouts"] = workspaces.root / "checkouts"
    verify._BASELINES.clear()  # the first task on this base commit makes its baseline
    times = []
    for number in (1, 2):
        worktree = await workspaces.prepare(repo, f"fixbot/shop-{number}-discount")
        (worktree.path / "shop" / "pricing.py").write_text(FIXED_PRICING)
        (worktree.path / "tests" / "test_discount.py").write_text(NEW_TEST)
        started = time.perf_counter()
        result = await verify.verify_fix(
            worktree.path,
            worktree.base_commit,
            TEST_COMMAND,
            timeout=120,
            sandbox=Sandbox(),
            **warm,
        )
        times.append(time.perf_counter() - started)
        assert result.ok, result.reason
    return times[0], times[1]


def row(name: str, values: list[float]) -> str:
    return f"| {name} | {min(values):.2f} | {statistics.median(values):.2f} | {max(values):.2f} |"


async def main(runs: int) -> None:
    prepare_s: list[float] = []
    fetch_counts: list[int] = []
    first_s: list[float] = []
    later_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fixbot-bench-") as folder:
        log = count_fetches(Path(folder))
        for run in range(runs):
            root = Path(folder) / f"run-{run}"
            (root / "prepare").mkdir(parents=True)
            (root / "verify").mkdir()
            elapsed, count = await prepare_at_once(root / "prepare", log)
            prepare_s.append(elapsed)
            fetch_counts.append(count)
            first, later = await verify_twice(root / "verify")
            first_s.append(first)
            later_s.append(later)
    print(f"code: {ROOT}, {runs} runs")
    print("| case | min s | median s | max s |")
    print("| --- | ---: | ---: | ---: |")
    print(row(f"prepare ×{TASKS} at once", prepare_s))
    print(row("verify_fix, first task on a base commit", first_s))
    print(row("verify_fix, a later task on the same base", later_s))
    print(f"git fetch processes for the {TASKS} prepares: {fetch_counts}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.runs))

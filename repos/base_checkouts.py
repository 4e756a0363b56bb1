"""Checkouts of a repository's base commits, kept warm between verifications.

Verification runs the new tests, and the suite for its baseline, on the base commit. A
checkout of it per run would cost a clone and a full checkout each time; instead each
repository keeps a few checkouts under one folder, one per verification running at once,
and each use cleans one (`git checkout --force` of the base commit, `git clean -ffdx`,
and `git status` to prove that nothing is left) before handing it out.

A checkout's git directory lives beside its work tree, not in it: the test run may write
only the work tree, so nothing it does can change how Fixbot's own git commands in the
checkout behave (config, hooks, filters). Fixbot runs them with that git directory named
explicitly, never one found in the work tree. The git directory borrows the objects of the
repository's mirror (`clone --shared`) and writes nothing into it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from repos.workspace import GitError, git, remove_tree


@contextlib.asynccontextmanager
async def base_checkout(folder: Path, worktree: Path, base_commit: str) -> AsyncIterator[Path]:
    """A clean checkout of `base_commit` of `worktree`'s repository, kept in `folder` and
    to ourselves until the block ends (a file lock: replicas sharing `folder` take others).
    """
    common = await git("rev-parse", "--path-format=absolute", "--git-common-dir", cwd=worktree)
    repository = Path(common.strip())
    name = repository.parent.name if repository.name == ".git" else repository.name
    digest = hashlib.sha256(str(repository).encode()).hexdigest()[:12]
    place = folder / f"{name}-{digest}"
    place.mkdir(parents=True, exist_ok=True)
    # The first slot no one holds: one per verification of this repository at once.
    index, lock = next(
        (index, lock)
        for index in itertools.count()
        if (lock := _try_lock(place / f"{index}.lock")) is not None
    )
    try:
        yield await _clean(place / str(index), repository, base_commit)
    finally:
        os.close(lock)  # releases the lock


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive flock on `path`, or None when it is taken.
    Each call opens the file anew, so uses in one process exclude each other too."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


async def _clean(slot: Path, repository: Path, base_commit: str) -> Path:
    """The slot's work tree holding exactly `base_commit`: reset when it is there, made
    afresh when it is not or cannot be reset (a test run can leave anything behind)."""
    try:
        if not (slot / "git").is_dir():
            raise GitError(f"{slot} has no checkout yet")
        await _reset(slot, base_commit)
    except (GitError, OSError):  # OSError: the run took away what git needs (a mode)
        trash = _empty(slot)
        if trash is not None:
            await remove_tree(trash)
        await git(
            "clone",
            "--quiet",
            "--shared",
            "--no-checkout",
            f"--separate-git-dir={slot / 'git'}",
            str(repository),
            str(slot / "repo"),
            cwd=slot,
        )
        await _reset(slot, base_commit)
    return slot / "repo"


def _empty(slot: Path) -> Path | None:
    """Make `slot` a new empty folder; returns where the old one went, to be removed.
    Renamed first: a tree the run made hard to delete never blocks the slot."""
    trash = None
    if slot.exists():
        trash = slot.with_name(f"{slot.name}.old-{uuid.uuid4().hex[:8]}")
        slot.rename(trash)
    slot.mkdir()
    return trash


async def _reset(slot: Path, base_commit: str) -> None:
    tree = slot / "repo"
    explicit = (f"--git-dir={slot / 'git'}", f"--work-tree={tree}")
    await git(*explicit, "checkout", "--quiet", "--force", "--detach", base_commit, cwd=tree)
    await git(*explicit, "clean", "-ffdxq", cwd=tree)
    left = await git(
        *explicit, "status", "--porcelain", "--ignored", "--untracked-files=all", cwd=tree
    )
    if left.strip():
        raise GitError(f"{tree} still differs from {base_commit} after a reset: {left[:200]}")
    # The work tree's `.git` (which git clean leaves alone) is Fixbot's again: a link to
    # the git directory, which the sandbox then shows read-only (repos/sandbox.py).
    dot_git = tree / ".git"
    if dot_git.is_dir() and not dot_git.is_symlink():
        await remove_tree(dot_git)
    dot_git.unlink(missing_ok=True)
    dot_git.write_text(f"gitdir: {slot / 'git'}\n")

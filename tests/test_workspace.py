"""Workspaces against real git: a bare origin in tmp_path, mirrors and worktrees beside it."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest

from repos.config import RepoConfig
from repos.workspace import (
    FIXBOT_EMAIL,
    GitError,
    Workspaces,
    branch_name,
    changed_files,
    commit_all,
    git,
    remove_tree,
)


async def commit_to(origin: Path, scratch: Path, files: dict[str, str], message: str) -> str:
    """Commit `files` on origin's main through a fresh clone at `scratch`; return the sha."""
    await git("clone", "--quiet", str(origin), str(scratch), cwd=origin.parent)
    for name, text in files.items():
        (scratch / name).parent.mkdir(parents=True, exist_ok=True)
        (scratch / name).write_text(text)
    await git("add", "-A", cwd=scratch)
    await git("commit", "--quiet", "-m", message, cwd=scratch)
    await git("push", "--quiet", "origin", "HEAD:main", cwd=scratch)
    return (await git("rev-parse", "HEAD", cwd=scratch)).strip()


@pytest.fixture
async def origin(tmp_path: Path) -> Path:
    origin = tmp_path / "origin.git"
    await git("init", "--quiet", "--bare", "-b", "main", str(origin), cwd=tmp_path)
    seed = tmp_path / "seed"
    await git("init", "--quiet", "-b", "main", str(seed), cwd=tmp_path)
    (seed / "app.py").write_text("def answer():\n    return 41\n")
    await git("add", "-A", cwd=seed)
    await git("commit", "--quiet", "-m", "first", cwd=seed)
    await git("push", "--quiet", str(origin), "main", cwd=seed)
    return origin


@pytest.fixture
def repo(origin: Path) -> RepoConfig:
    return RepoConfig(name="acme/shop", clone_url=f"file://{origin}", default_branch="main")


@pytest.fixture
def workspaces(tmp_path: Path) -> Workspaces:
    return Workspaces(tmp_path / "work")


async def origin_sha(origin: Path, ref: str = "main") -> str:
    return (await git("rev-parse", ref, cwd=origin)).strip()


async def test_two_tasks_share_one_mirror(
    workspaces: Workspaces, repo: RepoConfig, origin: Path
) -> None:
    first = await workspaces.prepare(repo, "fixbot/shop-1-first")
    second = await workspaces.prepare(repo, "fixbot/shop-2-second")

    assert first.path != second.path
    assert first.path == workspaces.root / "tasks" / "fixbot__shop-1-first"
    assert (first.path / "app.py").read_text().endswith("return 41\n")
    assert first.base_commit == second.base_commit == await origin_sha(origin)
    assert await git("branch", "--show-current", cwd=second.path) == "fixbot/shop-2-second\n"
    assert [path.name for path in (workspaces.root / "mirrors").iterdir()] == ["acme__shop.git"]
    for worktree in (first, second):
        common = await git(
            "rev-parse", "--path-format=absolute", "--git-common-dir", cwd=worktree.path
        )
        assert Path(common.strip()) == workspaces.mirror_path(repo)


async def test_concurrent_prepares_share_the_first_clone(
    workspaces: Workspaces, repo: RepoConfig
) -> None:
    first, second = await asyncio.gather(
        workspaces.prepare(repo, "fixbot/shop-1-a"), workspaces.prepare(repo, "fixbot/shop-2-b")
    )
    assert first.base_commit == second.base_commit
    assert [path.name for path in (workspaces.root / "mirrors").iterdir()] == ["acme__shop.git"]


async def test_prepare_recovers_from_a_worktree_deleted_by_hand(
    workspaces: Workspaces, repo: RepoConfig
) -> None:
    worktree = await workspaces.prepare(repo, "fixbot/shop-1-fix")
    await remove_tree(worktree.path)

    again = await workspaces.prepare(repo, "fixbot/shop-1-fix")

    assert again == worktree
    assert (again.path / "app.py").exists()


async def test_next_prepare_sees_new_commits(
    workspaces: Workspaces, repo: RepoConfig, origin: Path, tmp_path: Path
) -> None:
    await workspaces.prepare(repo, "fixbot/shop-1-before")
    new_sha = await commit_to(origin, tmp_path / "dev", {"app.py": "x = 1\n"}, "second")

    later = await workspaces.prepare(repo, "fixbot/shop-2-after")

    assert later.base_commit == new_sha
    assert (later.path / "app.py").read_text() == "x = 1\n"


async def test_prepare_reuses_a_task_worktree_after_a_restart(
    workspaces: Workspaces, repo: RepoConfig, origin: Path, tmp_path: Path
) -> None:
    worktree = await workspaces.prepare(repo, "fixbot/shop-1-fix")
    (worktree.path / "app.py").write_text("def answer():\n    return 42\n")
    await commit_to(origin, tmp_path / "dev", {"other.py": ""}, "meanwhile")

    again = await Workspaces(workspaces.root).prepare(repo, "fixbot/shop-1-fix")

    assert again == worktree
    assert "42" in (again.path / "app.py").read_text()


@pytest.fixture
def fetch_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `git` first on PATH that notes each `git fetch` in this log, then runs git."""
    real = shutil.which("git")
    wrapper = tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    log = tmp_path / "fetches.log"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'for arg in "$@"; do [ "$arg" = fetch ] && echo fetch >> {log} && break; done\n'
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    return log


def fetches(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


async def test_ten_worktrees_of_one_repository_are_prepared_at_once(
    workspaces: Workspaces, repo: RepoConfig, origin: Path, fetch_log: Path
) -> None:
    # Two replicas sharing the work folder, five tasks each, all at once.
    replicas = [workspaces, Workspaces(workspaces.root)]
    branches = [f"fixbot/shop-{number}-at-once" for number in range(10)]

    worktrees = await asyncio.gather(
        *(replicas[n % 2].prepare(repo, branch) for n, branch in enumerate(branches))
    )

    tip = await origin_sha(origin)
    for worktree, branch in zip(worktrees, branches, strict=True):
        assert worktree.branch == branch
        assert worktree.base_commit == tip
        assert (await git("rev-parse", "HEAD", cwd=worktree.path)).strip() == tip
        assert await git("branch", "--show-current", cwd=worktree.path) == f"{branch}\n"
        assert (worktree.path / "app.py").read_text().endswith("return 41\n")
    listing = await git("worktree", "list", "--porcelain", cwd=workspaces.mirror_path(repo))
    assert listing.count("\nbranch refs/heads/fixbot/") == 10
    # Prepares waiting together share a fetch: at most one, and one more for those who
    # asked while it ran, in each replica.
    assert fetches(fetch_log) <= 4


async def test_a_later_step_prepares_from_the_tasks_base_without_fetching(
    workspaces: Workspaces, repo: RepoConfig, origin: Path, tmp_path: Path, fetch_log: Path
) -> None:
    planned = await workspaces.prepare(repo, "fixbot/shop-1-fix")
    assert fetches(fetch_log) == 1
    await commit_to(origin, tmp_path / "dev", {"app.py": "x = 1\n"}, "meanwhile")

    executed = await workspaces.prepare(repo, "fixbot/shop-1-fix", planned.base_commit)
    assert executed == planned

    # Made again (its directory gone), the branch still starts at the task's base commit,
    # not at the default branch's newer tip.
    await remove_tree(planned.path)
    again = await Workspaces(workspaces.root).prepare(
        repo, "fixbot/shop-1-fix", planned.base_commit
    )
    assert again == planned
    assert (await git("rev-parse", "HEAD", cwd=again.path)).strip() == planned.base_commit
    assert fetches(fetch_log) == 1


async def test_a_base_commit_the_mirror_lacks_is_fetched(
    workspaces: Workspaces, repo: RepoConfig, origin: Path, tmp_path: Path, fetch_log: Path
) -> None:
    await workspaces.prepare(repo, "fixbot/shop-1-first")
    newer = await commit_to(origin, tmp_path / "dev", {"app.py": "x = 1\n"}, "second")

    worktree = await workspaces.prepare(repo, "fixbot/shop-2-second", newer)

    assert worktree.base_commit == newer
    assert fetches(fetch_log) == 2


async def test_missing_default_branch_is_named(workspaces: Workspaces, origin: Path) -> None:
    repo = RepoConfig(name="acme/shop", clone_url=f"file://{origin}", default_branch="trunk")
    with pytest.raises(GitError, match="no branch 'trunk'"):
        await workspaces.prepare(repo, "fixbot/shop-1-x")


async def test_commit_all_and_push_reach_origin(
    workspaces: Workspaces, repo: RepoConfig, origin: Path
) -> None:
    worktree = await workspaces.prepare(repo, "fixbot/shop-1-fix")
    (worktree.path / "app.py").write_text("def answer():\n    return 42\n")
    (worktree.path / "test_app.py").write_text("def test_answer():\n    assert True\n")

    sha = await commit_all(worktree.path, "Fix the answer\n\nSHOP-1")
    await workspaces.push(repo, worktree.path, worktree.branch, token=None)

    assert await origin_sha(origin, "refs/heads/fixbot/shop-1-fix") == sha
    author = await git("log", "-1", "--format=%an <%ae>|%ce", sha, cwd=origin)
    assert author.strip() == f"Fixbot <{FIXBOT_EMAIL}>|{FIXBOT_EMAIL}"
    assert await origin_sha(origin) == worktree.base_commit  # main is untouched


async def test_push_replaces_fixbots_own_commits_but_not_others(
    workspaces: Workspaces, repo: RepoConfig, origin: Path, tmp_path: Path
) -> None:
    worktree = await workspaces.prepare(repo, "fixbot/shop-1-fix")
    (worktree.path / "app.py").write_text("one\n")
    await commit_all(worktree.path, "attempt one")
    await workspaces.push(repo, worktree.path, worktree.branch, token=None)

    # A retry rewrites the branch: Fixbot's own earlier commit may go.
    await git("reset", "--quiet", "--hard", worktree.base_commit, cwd=worktree.path)
    (worktree.path / "app.py").write_text("two\n")
    retry = await commit_all(worktree.path, "attempt two")
    await workspaces.push(repo, worktree.path, worktree.branch, token=None)
    assert await origin_sha(origin, "refs/heads/fixbot/shop-1-fix") == retry

    # Someone pushes to the branch: Fixbot will not drop their commit.
    human = tmp_path / "human"
    await git("clone", "--quiet", "-b", worktree.branch, str(origin), str(human), cwd=tmp_path)
    (human / "note.txt").write_text("mine\n")
    await git("add", "-A", cwd=human)
    await git("commit", "-qm", "note", "--author=Ann <ann@example.com>", cwd=human)
    await git("push", "--quiet", "origin", "HEAD", cwd=human)
    theirs = (await git("rev-parse", "HEAD", cwd=human)).strip()
    (worktree.path / "app.py").write_text("three\n")
    await commit_all(worktree.path, "attempt three")
    with pytest.raises(GitError, match=r"has commits by ann@example\.com"):
        await workspaces.push(repo, worktree.path, worktree.branch, token=None)
    assert await origin_sha(origin, "refs/heads/fixbot/shop-1-fix") == theirs


async def test_a_push_waits_while_another_replica_adds_a_worktree(
    workspaces: Workspaces, repo: RepoConfig, origin: Path
) -> None:
    worktree = await workspaces.prepare(repo, "fixbot/shop-1-fix")
    (worktree.path / "app.py").write_text("one\n")
    await commit_all(worktree.path, "attempt one")
    await workspaces.push(repo, worktree.path, worktree.branch, token=None)
    (worktree.path / "app.py").write_text("two\n")
    retry = await commit_all(worktree.path, "attempt two")

    # Another replica is in `git worktree add`: it holds the worktree lock, and git has
    # written the new worktree's placeholder HEAD, which any fetch meanwhile fails on.
    mirror = workspaces.mirror_path(repo)
    adding = mirror / "worktrees" / "being-added"
    adding.mkdir()
    (adding / "HEAD").write_text("0" * 40 + "\n")
    (adding / "commondir").write_text("../..\n")
    lock = os.open(workspaces.root / "locks" / f"{mirror.name}.worktrees.lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        pushing = asyncio.create_task(
            workspaces.push(repo, worktree.path, worktree.branch, token=None)
        )
        await asyncio.sleep(0.5)
        assert not pushing.done()  # waiting for the lock, not failing on the placeholder
        shutil.rmtree(adding)  # the add is done (here: given up)
    finally:
        os.close(lock)
    await pushing
    assert await origin_sha(origin, "refs/heads/fixbot/shop-1-fix") == retry


async def test_push_token_never_shows_in_errors(workspaces: Workspaces, tmp_path: Path) -> None:
    await git("init", "--quiet", str(tmp_path / "r"), cwd=tmp_path)
    token = "ghs_secretsecretsecret"
    repo = RepoConfig(name="acme/shop", clone_url="https://127.0.0.1:9/acme/shop.git")
    with pytest.raises(GitError) as raised:
        await workspaces.push(repo, tmp_path / "r", "fixbot/x", token)
    assert token not in str(raised.value)
    assert "eC1hY2Nlc3MtdG9rZW4" not in str(raised.value)  # base64 of "x-access-token"


async def test_commit_all_refuses_an_empty_commit(workspaces: Workspaces, repo: RepoConfig) -> None:
    worktree = await workspaces.prepare(repo, "fixbot/shop-1-nothing")
    (worktree.path / "__pycache__").mkdir()
    (worktree.path / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    with pytest.raises(GitError, match="nothing to commit"):
        await commit_all(worktree.path, "empty")


async def test_changed_files_counts_committed_uncommitted_and_untracked(
    workspaces: Workspaces, repo: RepoConfig
) -> None:
    worktree = await workspaces.prepare(repo, "fixbot/shop-1-files")
    (worktree.path / "committed.py").write_text("")
    await commit_all(worktree.path, "one file")
    (worktree.path / "app.py").write_text("changed\n")
    (worktree.path / "tests").mkdir()
    (worktree.path / "tests" / "test new.py").write_text("")

    files = await changed_files(worktree.path, worktree.base_commit)

    assert files == ["app.py", "committed.py", "tests/test new.py"]


async def test_remove_takes_the_worktree_and_branch_away(
    workspaces: Workspaces, repo: RepoConfig
) -> None:
    worktree = await workspaces.prepare(repo, "fixbot/shop-1-gone")
    (worktree.path / "scratch.txt").write_text("untracked")
    mirror = workspaces.mirror_path(repo)

    await workspaces.remove(worktree)

    assert not worktree.path.exists()
    assert str(worktree.path) not in await git("worktree", "list", cwd=mirror)
    assert await git("branch", "--list", worktree.branch, cwd=mirror) == ""
    # The same branch can be made again from scratch.
    again = await workspaces.prepare(repo, "fixbot/shop-1-gone")
    assert not (again.path / "scratch.txt").exists()


async def test_cleanup_removes_only_old_worktrees(workspaces: Workspaces, repo: RepoConfig) -> None:
    old = await workspaces.prepare(repo, "fixbot/shop-1-old")
    fresh = await workspaces.prepare(repo, "fixbot/shop-2-fresh")
    stray = workspaces.root / "tasks" / "half-made"
    stray.mkdir()
    week_ago = time.time() - 7 * 24 * 3600
    for path in (old.path, stray):
        os.utime(path, (week_ago, week_ago))

    removed = await workspaces.cleanup(timedelta(days=3))

    assert removed == [old.path, stray]
    assert not old.path.exists()
    assert fresh.path.exists()
    assert await git("branch", "--list", old.branch, cwd=workspaces.mirror_path(repo)) == ""


@pytest.mark.parametrize(
    ("ref", "title", "expected"),
    [
        ("SHOP-1A", "TypeError: 'NoneType' object", "fixbot/shop-1a-typeerror-nonetype-object"),
        ("SHOP-42", "", "fixbot/shop-42"),
        ("", "Crash", "fixbot/task-crash"),
        ("acme/shop#7", "Ünïcödé ..lock @{x}", "fixbot/acme-shop-7-unicode-lock-x"),
        (
            "SHOP-9",
            "KeyError in checkout when the basket holds a discontinued product variant",
            "fixbot/shop-9-keyerror-in-checkout-when-the-basket-holds-a",
        ),
    ],
)
def test_branch_name(ref: str, title: str, expected: str) -> None:
    assert branch_name(ref, title) == expected


@pytest.mark.parametrize(
    "title",
    ["a" * 200, "x.lock", "..", "~^:?*[\\", "name.", "tab\there", "-" * 80, "日本語のタイトル"],
)
async def test_branch_names_are_valid_refs(title: str, tmp_path: Path) -> None:
    name = branch_name("PROJ-123", title)
    assert len(name) <= 60
    assert name == name.lower()
    assert (await git("check-ref-format", "--branch", name, cwd=tmp_path)).strip() == name

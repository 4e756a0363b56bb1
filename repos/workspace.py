"""Workspaces: one cached mirror per repository, one git worktree and branch per task.

Every git call runs through repos/process.py: bounded by a timeout and always reaped. Fixbot
commits and pushes here itself; agents never do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import math
import os
import re
import time
import unicodedata
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from repos import process
from repos.config import RepoConfig
from repos.errors import StepFailed, Transient

FIXBOT_NAME = "Fixbot"
FIXBOT_EMAIL = "fixbot@users.noreply.github.com"

# Network operations get longer than local ones: a first clone of a large repo is slow.
NETWORK_TIMEOUT = 600.0

# Safe defaults for every call: a worktree is edited by an agent, so nothing in it may
# make git run a program (hooks, fsmonitor), and commits must never wait for a signer.
_SAFE_CONFIG = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "commit.gpgsign=false",
    "tag.gpgsign=false",
)

# Caches that test runs leave behind, kept out of `git add -A` and changed_files through
# the mirror's info/exclude, which every worktree of it shares.
_EXCLUDES = (
    "__pycache__/",
    "*.py[cod]",
    ".pytest_cache/",
    ".mypy_cache/",
    ".ruff_cache/",
    ".tox/",
    ".coverage",
    "node_modules/",
)

# Commands that talk to the remote, and git's words for a remote that was briefly away
# (as opposed to one that refused: bad credentials, a rejected push).
_NETWORK_COMMANDS = {"fetch", "push", "ls-remote", "clone"}
_NETWORK_TROUBLE = re.compile(
    r"could not resolve host|connection (refused|reset|timed out)|operation timed out|"
    r"the remote end hung up unexpectedly|early eof|rpc failed|"
    r"returned error: (429|5\d\d)|http (429|5\d\d)|temporary failure|network is unreachable",
    re.IGNORECASE,
)
_INHERITED_GIT_VARIABLES = ("GIT_SSH", "GIT_SSH_COMMAND")
_CREDENTIALS_IN_URL = re.compile(r"(://)[^/@\s]+@")


class GitError(StepFailed):
    """A git command failed or timed out; the message names the command and git's words."""


class GitNetworkError(GitError, Transient):
    """Talking to the repository's remote failed in a way that may pass (network, 5xx)."""


@dataclass(frozen=True)
class Worktree:
    """A task's checkout: its own directory and branch, made from `base_commit`."""

    path: Path
    branch: str
    base_commit: str


async def git(
    *args: str,
    cwd: Path,
    timeout: float = 120,  # noqa: ASYNC109 (the bound is part of every call's contract)
    extra_config: Sequence[str] = (),
) -> str:
    """Run `git ARGS` in `cwd` and return its stdout, or raise GitError.

    `extra_config` holds `key=value` settings for this one call. They travel in git's
    GIT_CONFIG_* environment rather than argv, so secrets never show in a process list.
    """
    network = bool(args) and args[0] in _NETWORK_COMMANDS
    try:
        result = await _run_git(args, cwd=cwd, timeout=timeout, extra_config=extra_config)
    except GitError as error:  # timed out
        raise (GitNetworkError(str(error)) if network else error) from None
    if result.exit_code != 0:
        message = f"{_describe(args)} failed (exit {result.exit_code}): {_tail(result.stderr)}"
        if network and _NETWORK_TROUBLE.search(result.stderr):
            raise GitNetworkError(message)
        raise GitError(message)
    return result.stdout


async def _run_git(
    args: Sequence[str],
    *,
    cwd: Path,
    timeout: float = 120,  # noqa: ASYNC109
    extra_config: Sequence[str] = (),
) -> process.Finished:
    command = ["git"]
    for setting in _SAFE_CONFIG:
        command += ["-c", setting]
    result = await process.run(
        [*command, *args], cwd=cwd, env=_git_env(extra_config), timeout=timeout
    )
    if result.timed_out:
        raise GitError(f"{_describe(args)} timed out after {timeout:g} s")
    return result


def _git_env(extra_config: Sequence[str]) -> dict[str, str]:
    # Inherited GIT_DIR, GIT_INDEX_FILE and the like would point git somewhere else.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("GIT_") or key in _INHERITED_GIT_VARIABLES
    }
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME=FIXBOT_NAME,
        GIT_AUTHOR_EMAIL=FIXBOT_EMAIL,
        GIT_COMMITTER_NAME=FIXBOT_NAME,
        GIT_COMMITTER_EMAIL=FIXBOT_EMAIL,
        LC_ALL="C",
    )
    env["GIT_CONFIG_COUNT"] = str(len(extra_config))
    for index, setting in enumerate(extra_config):
        key, separator, value = setting.partition("=")
        if not separator:
            raise ValueError(f"git config {setting!r} is not key=value")
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


def _describe(args: Sequence[str]) -> str:
    text = _CREDENTIALS_IN_URL.sub(r"\1***@", " ".join(("git", *args)))
    return text if len(text) <= 200 else text[:197] + "..."


def _tail(text: str, limit: int = 1000) -> str:
    text = _CREDENTIALS_IN_URL.sub(r"\1***@", text.strip())
    return text if len(text) <= limit else "..." + text[-limit:]


# Branch names ---------------------------------------------------------------------------

BRANCH_PREFIX = "fixbot/"
MAX_BRANCH_LENGTH = 60


def branch_name(ref_key: str, title: str) -> str:
    """`fixbot/<ref>-<slug>`: lowercase, safe for git check-ref-format, at most 60 chars."""
    ref = _slug(ref_key)[:30].strip("-") or "task"
    name = f"{BRANCH_PREFIX}{ref}"
    slug = _slug(title)
    room = MAX_BRANCH_LENGTH - len(name) - 1
    if slug and room > 0:
        if len(slug) > room:
            cut = slug[:room]
            # Prefer a cut at a word boundary when it keeps most of the room.
            boundary = cut.rfind("-")
            slug = cut[:boundary] if boundary >= room // 2 else cut
        slug = slug.strip("-")
        if slug:
            name = f"{name}-{slug}"
    return name


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


# Workspaces -----------------------------------------------------------------------------


class Workspaces:
    """Mirrors under `root/mirrors`, task worktrees under `root/tasks`, and under
    `root/locks` the file locks that keep replicas sharing `root` off each other's git."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.mirrors = self.root / "mirrors"
        self.tasks = self.root / "tasks"
        self.locks = self.root / "locks"
        self._locks: dict[str, asyncio.Lock] = {}
        self._fetched: dict[Path, float] = {}  # mirror → when its last fetch here began

    def mirror_path(self, repo: RepoConfig) -> Path:
        owner, name = repo.name.split("/", 1)
        return self.mirrors / f"{owner}__{name}.git"

    def worktree_path(self, branch: str) -> Path:
        return self.tasks / branch.replace("/", "__")

    async def prepare(
        self, repo: RepoConfig, branch: str, base_commit: str | None = None
    ) -> Worktree:
        """A worktree on branch `branch`, reused when it is there already (a later step of
        the task, a restart mid-task) and holds `base_commit`.

        A new one starts at `base_commit` when given (a task's later steps: no fetch when
        the mirror has that commit), else at the default branch's freshly fetched tip.
        Worktrees of one repository are prepared side by side; git's own steps on the
        mirror's worktree list (the fetch, `worktree add`) take turns.
        """
        mirror = self.mirror_path(repo)
        path = self.worktree_path(branch)
        async with self._lock(f"tasks/{path.name}"):
            if base_commit is None or not await _has_commit(mirror, base_commit):
                await self._fetch(repo, mirror)
            upstream = f"refs/remotes/origin/{repo.default_branch}"
            existing = await _worktree_branches(mirror)
            if existing.get(path) == branch and path.is_dir():
                if base_commit is None:
                    base = await git("merge-base", "HEAD", upstream, cwd=path)
                    return Worktree(path, branch, base.strip())
                if await _is_ancestor(path, base_commit):
                    return Worktree(path, branch, base_commit)
            if path.exists() or path in existing:
                await self._discard(mirror, path)
            start = base_commit or upstream
            check = await _run_git(["rev-parse", "--verify", "--quiet", start], cwd=mirror)
            if check.exit_code != 0:
                where = _tail(repo.clone_url)
                raise GitError(
                    f"{repo.name} has no branch {repo.default_branch!r} at {where}: check "
                    "default_branch in fixbot.yml."
                    if base_commit is None
                    else f"{repo.name} has no commit {base_commit} at {where} any more."
                )
            self.tasks.mkdir(parents=True, exist_ok=True)
            async with self._worktrees(mirror):
                await git(
                    "worktree", "add", "--no-track", "-B", branch, str(path), start, cwd=mirror
                )
            base = await git("rev-parse", "HEAD", cwd=path)
            return Worktree(path, branch, base.strip())

    async def remove(self, worktree: Worktree) -> None:
        """Remove the worktree's directory and its branch in the mirror."""
        mirror = await self._mirror_of(worktree.path)
        mirrors = [mirror] if mirror else self._all_mirrors()
        if mirror is None and worktree.path.exists():
            await remove_tree(worktree.path)
        async with self._lock(f"tasks/{worktree.path.name}"):
            for candidate in mirrors:
                if mirror is not None:
                    await self._discard(candidate, worktree.path)
                else:
                    await self._prune(candidate)
                async with self._lock(candidate.name):  # refs are rewritten as by a fetch
                    await _run_git(["branch", "-D", worktree.branch], cwd=candidate)

    async def cleanup(self, max_age: timedelta) -> list[Path]:
        """Remove task worktrees untouched for longer than `max_age`; return their paths.

        This is the policy for failed tasks kept for inspection: call it with an age well
        beyond the longest step, so no running task is touched.
        """
        if not self.tasks.is_dir():
            return []
        cutoff = time.time() - max_age.total_seconds()
        removed = []
        for path in sorted(self.tasks.iterdir()):
            if not path.is_dir() or path.stat().st_mtime > cutoff:
                continue
            mirror = await self._mirror_of(path)
            head = await _run_git(["symbolic-ref", "--quiet", "--short", "HEAD"], cwd=path)
            if mirror is not None and head.exit_code == 0:
                await self.remove(Worktree(path, head.stdout.strip(), ""))
            else:  # not one of our worktrees any more: just the directory
                await remove_tree(path)
            removed.append(path)
        for mirror in self._all_mirrors():
            await self._prune(mirror)
        return removed

    async def push(self, repo: RepoConfig, worktree: Path, branch: str, token: str | None) -> None:
        """Push the worktree's HEAD to `branch` at `repo.clone_url` (not the mirror).

        The branch is Fixbot's: a retry may replace its own earlier commits (forced, with a
        lease on the tip just seen), but commits someone else pushed there are never dropped.
        """
        remote_url = repo.clone_url
        config = auth_config(remote_url, token)
        ref = f"refs/heads/{branch}"
        listing = await git(
            "ls-remote", remote_url, ref, cwd=worktree, timeout=NETWORK_TIMEOUT, extra_config=config
        )
        remote_tip = listing.split()[0] if listing.strip() else ""
        if remote_tip:
            # Alone with the worktree list: a fetch reads every worktree's HEAD, and one
            # being added meanwhile fails it ("bad object worktrees/…/HEAD").
            async with self._worktrees(self.mirror_path(repo)):
                await git(
                    "fetch",
                    "--quiet",
                    "--no-tags",
                    remote_url,
                    ref,
                    cwd=worktree,
                    timeout=NETWORK_TIMEOUT,
                    extra_config=config,
                )
            # Fixbot's own commits have it as author and committer; anything else is someone's.
            emails = await git(
                "log", "--format=%ae%n%ce", remote_tip, "--not", "HEAD", cwd=worktree
            )
            others = {email for email in emails.split() if email != FIXBOT_EMAIL}
            if others:
                raise GitError(
                    f"{branch} at {_tail(remote_url)} has commits by "
                    f"{', '.join(sorted(others))} that this push would drop; Fixbot leaves "
                    "them alone."
                )
        await git(
            "push",
            "--quiet",
            "--no-verify",
            f"--force-with-lease={ref}:{remote_tip}",
            remote_url,
            f"HEAD:{ref}",
            cwd=worktree,
            timeout=NETWORK_TIMEOUT,
            extra_config=config,
        )

    async def _fetch(self, repo: RepoConfig, mirror: Path) -> None:
        """Bring the mirror up to date, holding it for the fetch alone. A fetch that began
        after this call was made serves it too: prepares waiting together fetch once."""
        asked = time.monotonic()
        async with self._lock(mirror.name):
            if self._fetched.get(mirror, -math.inf) >= asked:
                return
            started = time.monotonic()
            await self._update_mirror(repo, mirror)
            self._fetched[mirror] = started

    @contextlib.asynccontextmanager
    async def _lock(self, name: str) -> AsyncIterator[None]:
        """`name` to ourselves: a mirror's fetches and ref rewrites (`<mirror>`), or a task's
        worktree (`tasks/<worktree>`, always taken before its mirror's). Tasks here queue
        on an asyncio lock, and replicas that share the work folder (one volume, as in
        docker-compose.yml) on a file lock."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            lock = self.locks / f"{name}.lock"
            lock.parent.mkdir(parents=True, exist_ok=True)
            async with _file_lock(lock):
                yield

    def _worktrees(self, mirror: Path) -> contextlib.AbstractAsyncContextManager[None]:
        """The mirror's list of worktrees, changed or read by one git at a time: `worktree
        add` reads every worktree's files and fails on one half-added ("failed to read
        worktrees/…/commondir"), and `worktree prune` would take a worktree being added for
        one deleted by hand."""
        self.locks.mkdir(parents=True, exist_ok=True)
        return _file_lock(self.locks / f"{mirror.name}.worktrees.lock")

    async def _prune(self, mirror: Path) -> None:
        async with self._worktrees(mirror):
            await git("worktree", "prune", cwd=mirror)

    def _all_mirrors(self) -> list[Path]:
        if not self.mirrors.is_dir():
            return []
        return sorted(path for path in self.mirrors.glob("*.git") if path.is_dir())

    async def _update_mirror(self, repo: RepoConfig, mirror: Path) -> None:
        # A bare repository whose remote branches land in refs/remotes/origin/*: unlike
        # `clone --mirror`'s refs/*:refs/* mapping, `fetch --prune` then never touches the
        # task branches that live in refs/heads/.
        if not mirror.is_dir():  # noqa: ASYNC240 (one stat of a local directory)
            self.mirrors.mkdir(parents=True, exist_ok=True)
            staging = mirror.with_name(f"{mirror.name}.tmp{os.getpid()}")
            if staging.exists():
                await remove_tree(staging)
            await git("init", "--quiet", "--bare", str(staging), cwd=self.mirrors)
            await git("remote", "add", "origin", repo.clone_url, cwd=staging)
            await git(
                "config", "remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*", cwd=staging
            )
            await git("fetch", "--quiet", "--prune", "origin", cwd=staging, timeout=NETWORK_TIMEOUT)
            staging.rename(mirror)
        else:
            current = (await git("remote", "get-url", "origin", cwd=mirror)).strip()
            if current != repo.clone_url:
                await git("remote", "set-url", "origin", repo.clone_url, cwd=mirror)
            # Alone with the worktree list: a fetch reads every worktree's HEAD, and one
            # being added or removed meanwhile fails it ("bad object worktrees/…/HEAD").
            async with self._worktrees(mirror):
                await git(
                    "fetch", "--quiet", "--prune", "origin", cwd=mirror, timeout=NETWORK_TIMEOUT
                )
        (mirror / "info").mkdir(exist_ok=True)
        # Replaced whole, never rewritten in place: other tasks' git reads it meanwhile.
        staged = mirror / "info" / f"exclude.tmp{os.getpid()}"
        staged.write_text("\n".join(_EXCLUDES) + "\n")
        staged.replace(mirror / "info" / "exclude")

    async def _mirror_of(self, path: Path) -> Path | None:
        try:
            result = await _run_git(
                ["rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=path
            )
        except (FileNotFoundError, NotADirectoryError):
            return None
        if result.exit_code != 0:
            return None
        mirror = Path(result.stdout.strip())
        return mirror if mirror.parent == self.mirrors else None

    async def _discard(self, mirror: Path, path: Path) -> None:
        # `worktree remove` fails on a directory git no longer knows; rm -rf covers that.
        async with self._worktrees(mirror):
            await _run_git(["worktree", "remove", "--force", "--force", str(path)], cwd=mirror)
        await remove_tree(path)
        await self._prune(mirror)


@contextlib.asynccontextmanager
async def _file_lock(
    path: Path,
    timeout: float = NETWORK_TIMEOUT,  # noqa: ASYNC109
) -> AsyncIterator[None]:
    """An exclusive flock on `path`, polled so the event loop never blocks;
    the kernel releases it when its holder dies, so a killed replica never leaves it held.
    Each call opens the file anew, so calls in one process exclude each other too."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise GitError(f"{path} stayed locked for {timeout:g} s") from None
                await asyncio.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


async def _has_commit(mirror: Path, commit: str) -> bool:
    if not mirror.is_dir():  # noqa: ASYNC240 (one stat of a local directory)
        return False
    result = await _run_git(["cat-file", "-e", f"{commit}^{{commit}}"], cwd=mirror)
    return result.exit_code == 0


async def _is_ancestor(worktree: Path, commit: str) -> bool:
    result = await _run_git(["merge-base", "--is-ancestor", commit, "HEAD"], cwd=worktree)
    return result.exit_code == 0


async def _worktree_branches(mirror: Path) -> dict[Path, str | None]:
    """The mirror's worktrees and the branch each has checked out (None: detached)."""
    listing = await git("worktree", "list", "--porcelain", cwd=mirror)
    worktrees: dict[Path, str | None] = {}
    current: Path | None = None
    for line in listing.splitlines():
        if line.startswith("worktree "):
            current = Path(line.removeprefix("worktree "))
            worktrees[current] = None
        elif line.startswith("branch refs/heads/") and current is not None:
            worktrees[current] = line.removeprefix("branch refs/heads/")
    worktrees.pop(mirror, None)
    return worktrees


async def remove_tree(path: Path) -> None:
    """`rm -rf PATH` as a subprocess, keeping the event loop free for large trees."""
    if (await process.run(["rm", "-rf", "--", str(path)], timeout=120)).timed_out:
        raise TimeoutError(f"rm -rf {path} did not finish within 120 s")


# Commits and pushes ---------------------------------------------------------------------


async def commit_all(worktree: Path, message: str, *, only: Sequence[str] = ()) -> str:
    """Stage everything (or only the paths `only`) and commit it as Fixbot; return the new
    commit's sha.

    When nothing is left to commit and HEAD is already Fixbot's commit with this message
    (a step resumed after a crash that followed the commit), that commit is returned.
    """
    await git("add", "-A", "--", *only, cwd=worktree)
    staged = await _run_git(["diff", "--cached", "--quiet"], cwd=worktree)
    if staged.exit_code == 0:
        made = await committed(worktree, message)
        if made is not None:
            return made
        raise GitError(f"nothing to commit in {worktree}: the worktree has no changes")
    await git(
        "commit",
        "--quiet",
        "--no-verify",
        f"--author={FIXBOT_NAME} <{FIXBOT_EMAIL}>",
        f"--message={message}",
        *(["--", *only] if only else []),
        cwd=worktree,
    )
    return (await git("rev-parse", "HEAD", cwd=worktree)).strip()


async def discard_except(worktree: Path, keep: str) -> None:
    """Undo every change in the worktree but to `keep` (a path at its top): edited tracked
    files go back to HEAD, untracked files go. Ignored files stay (they are never committed)."""
    await git("checkout", "--", ".", f":(exclude){keep}", cwd=worktree)
    await git("clean", "-d", "--force", "--quiet", f"--exclude=/{keep}", cwd=worktree)


async def committed(worktree: Path, message: str) -> str | None:
    """HEAD's sha when it is Fixbot's commit with `message` and nothing is left uncommitted."""
    status = await git("status", "--porcelain", cwd=worktree)
    head = await git("log", "-1", "--format=%H%n%ae%n%B", cwd=worktree)
    sha, _, rest = head.partition("\n")
    email, _, body = rest.partition("\n")
    if status.strip() or email != FIXBOT_EMAIL or body.strip() != message.strip():
        return None
    return sha


async def changed_files(worktree: Path, base_commit: str) -> list[str]:
    """Paths that differ from `base_commit`: committed, uncommitted and untracked."""
    diff = await git("diff", "--name-only", "-z", "--no-renames", base_commit, "--", cwd=worktree)
    untracked = await git("ls-files", "--others", "--exclude-standard", "-z", cwd=worktree)
    names = {name for name in (diff + untracked).split("\0") if name}
    return sorted(names)


def auth_config(remote_url: str, token: str | None) -> list[str]:
    """For https with a token: a basic-auth header for this one call, nothing written."""
    config = ["credential.helper="]
    if token and remote_url.startswith("https://"):
        secret = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        config.append(f"http.extraHeader=Authorization: Basic {secret}")
    return config

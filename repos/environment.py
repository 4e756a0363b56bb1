"""A repository's own test environment: its `setup_command`, run once and cached.

Real repositories need their dependencies before `test_command` can run. A repo's
`setup_command` (fixbot.yml) runs in a scratch clone of the task's checkout with
`$FIXBOT_ENV` (also `$VIRTUAL_ENV`) set to an empty directory and that directory's `bin`
first on PATH, so

    setup_command: python -m venv "$FIXBOT_ENV" && pip install -r requirements.txt

builds a virtual environment there. The directory is `<workdir>/envs/<owner__name>/<hash>`,
the hash of the command and of the files it depends on (`setup_files`, or the usual
manifests and lock files), so it runs again only when one of them changes. Setup may use
the network (it installs packages); the agents and Fixbot's own test runs then get the
environment's variables and nothing else from it: `RepoEnvironment.variables`, with
`path` as the one directory a sandbox needs to mount (read-only) for them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from repos.config import RepoConfig
from repos.errors import StepFailed
from repos.sandbox import Sandbox
from repos.verify import CommandResult, run_process
from repos.workspace import _file_lock, git, remove_tree

# What a setup usually depends on, when `setup_files` does not say (globs at the repo root).
DEFAULT_SETUP_FILES = (
    "requirements*.txt",
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "poetry.lock",
    "uv.lock",
    "Pipfile.lock",
    "package.json",
    "package-lock.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "Gemfile.lock",
    "go.sum",
    "Cargo.lock",
)
READY = ".fixbot-ready"  # written last: an environment without it is half made


@dataclass(frozen=True)
class RepoEnvironment:
    """A prepared environment: its directory, and how long preparing it took (0: cached)."""

    path: Path
    setup_s: float = 0.0

    @property
    def variables(self) -> dict[str, str]:
        """What a process needs to run in it: the directory named, its `bin` first on PATH."""
        path = os.environ.get("PATH", os.defpath)
        return {
            "FIXBOT_ENV": str(self.path),
            "VIRTUAL_ENV": str(self.path),
            "PATH": f"{self.path / 'bin'}{os.pathsep}{path}",
        }


class SetupFailed(StepFailed):
    """The repository's setup_command did not succeed; nothing is cached."""


async def prepare_environment(
    repo: RepoConfig, checkout: Path, envs: Path, *, within_s: float, sandbox: Sandbox
) -> RepoEnvironment | None:
    """The repo's environment for `checkout`, set up now unless cached; None without setup.

    The setup runs repository code, so it runs in `sandbox` too, with the network."""
    if not repo.setup_command:
        return None
    digest = setup_digest(repo, checkout)
    owner, name = repo.name.split("/")
    home = envs / f"{owner}__{name}"
    environment = RepoEnvironment(home / digest)
    if (environment.path / READY).is_file():
        return environment
    home.mkdir(parents=True, exist_ok=True)
    # Replicas share the work folder: one of them sets up, the others wait and reuse it.
    async with _file_lock(home / f"{digest}.lock", timeout=within_s):
        if (environment.path / READY).is_file():
            return environment
        if environment.path.exists():
            await remove_tree(environment.path)
        environment.path.mkdir()
        started = time.monotonic()
        result = await _run_setup(repo.setup_command, checkout, environment, within_s, sandbox)
        if not result.passed:
            await remove_tree(environment.path)
            how = f"timed out after {within_s:g} s" if result.timed_out else "failed"
            raise SetupFailed(
                f"The setup command of {repo.name} {how} (exit {result.exit_code}): "
                f"`{repo.setup_command}`.",
                output=result.output,
            )
        (environment.path / READY).write_text(repo.setup_command)
        return RepoEnvironment(environment.path, round(time.monotonic() - started, 3))


async def _run_setup(
    command: str,
    checkout: Path,
    environment: RepoEnvironment,
    within_s: float,
    sandbox: Sandbox,
) -> CommandResult:
    """Run the setup in a scratch clone of `checkout`: what it writes there (build files,
    egg-info) stays out of the task's diff, and every task shares the environment."""
    holder = Path(tempfile.mkdtemp(prefix="fixbot-setup-"))
    try:
        scratch = holder / "repo"
        await git("clone", "--quiet", "--shared", str(checkout), str(scratch), cwd=holder)
        home = {"HOME": "/tmp"} if sandbox.enabled else {}
        async with sandbox.confine(
            writable=[scratch, environment.path], setenv=home, network=True
        ) as confinement:
            argv = confinement.argv(["/bin/sh", "-c", command])
            return await run_process(command, argv, scratch, within_s, environment.variables)
    finally:
        await asyncio.shield(remove_tree(holder))


def setup_digest(repo: RepoConfig, checkout: Path) -> str:
    """A short hash of the setup command and of the files it depends on in `checkout`.

    Read inline: a few manifests and lock files cost less than a thread.
    """
    digest = hashlib.sha256((repo.setup_command or "").encode())
    patterns = repo.setup_files or list(DEFAULT_SETUP_FILES)
    files = sorted({path for pattern in patterns for path in checkout.glob(pattern)})
    for path in files:
        if path.is_file():
            digest.update(b"\0" + path.relative_to(checkout).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
